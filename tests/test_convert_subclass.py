"""``ks.prune`` / ``ks.quantize`` convert subclasses of supported Keras
layers: the sparse class combines the family's class with the user's class
(``ks.layers.sparse_class_for``), the user's methods still run, and the
model round-trips through ``.keras``."""

import warnings

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse.utils import sparse_layers


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@keras.saving.register_keras_serializable(package="KsTest")
class ScaledDense(keras.layers.Dense):
    """Overrides ``call`` but delegates to Dense's: the mask still applies."""

    def __init__(self, units, scale=1.0, **kwargs):
        super().__init__(units, **kwargs)
        self.scale = scale

    def call(self, inputs):
        return super().call(inputs) * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="KsTest")
class OwnConv(keras.layers.Conv2D):
    """Its own ``call`` reads ``self.kernel`` (served by the property)."""

    def call(self, inputs):
        return keras.ops.conv(inputs, self.kernel, padding="valid") + self.bias


class LatentDense(keras.layers.Dense):
    """Reads the latent ``self._kernel``: the mask could not reach it."""

    def call(self, inputs):
        return keras.ops.matmul(inputs, self._kernel)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        OwnConv(4, 3, name="conv"),
        keras.layers.Flatten(),
        ScaledDense(3, scale=2.0, name="dense"),
    ])


def _data(n=16, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 6, 6, 2).astype("float32"), rng.randint(0, 3, size=n)


def test_sparse_class_for_combines_the_family_and_the_user_class():
    cls = ks.layers.sparse_class_for(ScaledDense)
    assert cls.__name__ == "SparseScaledDense"
    assert issubclass(cls, ks.layers.SparseDense) and issubclass(cls, ScaledDense)
    assert cls._keras_parent is ScaledDense
    assert ks.layers.sparse_class_for(ScaledDense) is cls  # made once
    assert ks.layers.sparse_class_for(keras.layers.Dense) is ks.layers.SparseDense
    assert ks.layers.sparse_class_for(ks.layers.SparseDense) is ks.layers.SparseDense
    assert ks.layers.sparse_class_for(keras.layers.LSTM) is None
    assert ks.layers.sparse_class_for(LatentDense) is None
    # The user's arguments are in the signature and the config.
    layer = cls(3, scale=0.5, schedule=0.5)
    assert layer.scale == 0.5 and "scale" in cls.__signature__.parameters
    with pytest.raises(TypeError, match="cls=3"):
        ks.layers.sparse_class_for(3)


@pytest.mark.slow
@pytest.mark.parametrize("convert", ["prune", "quantize", "prune_then_quantize"])
def test_convert_fit_strip_and_keras_round_trip(convert, tmp_path):
    model = _model()
    x, y = _data()
    if convert in ("prune", "prune_then_quantize"):
        model = ks.prune(model, 0.5)
    if convert in ("quantize", "prune_then_quantize"):
        model = ks.quantize(model, 4)
    conv, dense = model.get_layer("conv"), model.get_layer("dense")
    assert isinstance(conv, OwnConv) and isinstance(conv, ks.layers.SparseConv2D)
    assert isinstance(dense, ScaledDense) and dense.scale == 2.0
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = [ks.callbacks.Pruning()] if convert != "quantize" else []
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=callbacks)

    # The user's call runs on the effective kernel: ScaledDense doubles
    # Dense's output computed with mask * quantizer(latent).
    flat = _np(keras.layers.Flatten()(model.get_layer("conv")(x)))
    effective = _np(dense.effective_weight("kernel"))
    np.testing.assert_allclose(_np(dense(flat)), 2.0 * (flat @ effective + _np(dense.bias)),
                               rtol=1e-5, atol=1e-5)
    if convert != "quantize":
        for layer in sparse_layers(model):
            mask = _np(layer.get_mask("kernel")).astype(bool)
            assert (~mask).sum() == mask.size // 2
            assert np.all(_np(layer.effective_weight("kernel"))[~mask] == 0)

    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(l).__name__ for l in loaded.layers] == ["SparseOwnConv", "Flatten",
                                                           "SparseScaledDense"]
    for old, new in zip(sparse_layers(model), sparse_layers(loaded)):
        np.testing.assert_array_equal(_np(old.latent_weight("kernel")),
                                      _np(new.latent_weight("kernel")))
        if convert != "quantize":
            np.testing.assert_array_equal(_np(old.get_mask("kernel")), _np(new.get_mask("kernel")))
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=1e-6, atol=1e-6)

    plain = ks.strip(model)
    assert [type(l) for l in plain.layers] == [OwnConv, keras.layers.Flatten, ScaledDense]
    assert plain.get_layer("dense").scale == 2.0
    np.testing.assert_allclose(_np(plain(x)), _np(model(x)), rtol=1e-5, atol=1e-5)


def test_subclassed_model_is_converted_in_place():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = ScaledDense(4, scale=3.0)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 8), "float32"))
    ks.prune(net, 0.75)
    assert isinstance(net.d, ks.layers.SparseDense) and net.d.scale == 3.0
    mask = _np(net.d.get_mask("kernel"))
    assert mask.shape == (8, 4)


def test_unregistered_subclass_loads_with_custom_objects(tmp_path):
    class Local(keras.layers.Dense):
        pass

    keras.utils.set_random_seed(1)
    model = ks.prune(keras.Sequential([keras.Input((5,)), Local(3, name="d")]), 0.5)
    assert model.get_layer("d").get_config()["keras_parent"] == "Local"
    path = str(tmp_path / "local.keras")
    model.save(path)
    # As in a fresh process: the sparse class is made again at load.
    from keras_sparse.layers import sparse_layers as family

    made = family._SUBCLASSES.pop(Local)
    loaded = keras.saving.load_model(path, custom_objects={"Local": Local})
    remade = type(loaded.get_layer("d"))
    assert remade is not made and remade is family._SUBCLASSES[Local]
    assert issubclass(remade, Local) and issubclass(remade, ks.layers.SparseDense)
    x = np.random.RandomState(0).rand(4, 5).astype("float32")
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=1e-6)


def test_unknown_user_class_at_load_says_what_to_do():
    layer = ks.layers.sparse_class_for(ScaledDense)(3, schedule=0.5)
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == "keras_sparse>SparseSubclass"
    config["config"]["keras_parent"] = "Nowhere>Missing"
    with pytest.raises(TypeError, match="register_keras_serializable.*custom_objects"):
        keras.saving.deserialize_keras_object(config)
    config["config"]["keras_parent"] = "KsTest>ScaledDense"
    again = keras.saving.deserialize_keras_object(config)
    assert type(again) is type(layer) and again.scale == 1.0


def test_subclass_reading_the_latent_weight_is_skipped_with_a_warning():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((5,)), LatentDense(3, name="latent"),
                              keras.layers.Dense(2, name="plain")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = ks.prune(model, 0.5)
    assert any("latent (LatentDense)" in str(w.message) for w in caught)
    assert type(pruned.get_layer("latent")) is LatentDense
    assert isinstance(pruned.get_layer("plain"), ks.layers.SparseDense)
    with pytest.raises(ValueError, match="LatentDense"):
        ks.prune(model, 0.5, strict=True)


_USER_MODULE = '''
import keras


@keras.saving.register_keras_serializable(package="UserPkg")
class ShiftedConv(keras.layers.Conv2D):
    def call(self, inputs):
        return super().call(inputs) + 1.0
'''

_SAVE = '''
import numpy as np, keras, keras_sparse as ks
from user_layers import ShiftedConv
keras.utils.set_random_seed(0)
model = ks.prune(keras.Sequential([keras.Input((6, 6, 2)), ShiftedConv(3, 3, name="c")]), 0.5)
x = np.random.RandomState(0).rand(2, 6, 6, 2).astype("float32")
model.compile("sgd", "mse")
model.fit(x, np.zeros((2, 4, 4, 3)), verbose=0, callbacks=[ks.callbacks.Pruning()])
model.save("model.keras")
np.save("out.npy", keras.ops.convert_to_numpy(model(x)))
np.save("mask.npy", keras.ops.convert_to_numpy(model.layers[0].get_mask("kernel")))
'''

_LOAD = '''
import numpy as np, keras
import user_layers  # only the user's class: no sparse class was made here
import keras_sparse as ks
model = keras.saving.load_model("model.keras")
layer = model.layers[0]
assert isinstance(layer, user_layers.ShiftedConv) and isinstance(layer, ks.layers.SparseConv2D)
x = np.random.RandomState(0).rand(2, 6, 6, 2).astype("float32")
np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), np.load("out.npy"), atol=1e-6)
np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.get_mask("kernel")), np.load("mask.npy"))
print("LOADED")
'''


@pytest.mark.slow
def test_keras_file_loads_in_a_fresh_process(tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    (tmp_path / "user_layers.py").write_text(_USER_MODULE)
    root = str(pathlib.Path(ks.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root])}
    for script in (_SAVE, _LOAD):
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED" in result.stdout
