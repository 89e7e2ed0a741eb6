"""``ks.export`` / ``ks.load_exported``: packed weights that reload to the
stripped Keras model exactly, and files that are really small."""

import os

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse.utils import sparse_layers
from conftest import to_np
from keras_sparse import quantizers


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, use_bias=False, name="first"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.Dense(256, use_bias=False, name="hidden"),
        keras.layers.BatchNormalization(name="bn2"),
        keras.layers.Dense(10, name="head"),
    ])


def _cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, name="conv")(inp)
    h = keras.layers.DepthwiseConv2D(3, name="depthwise")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, keras.layers.Dense(5, name="head")(h))


def _pruned(model, sparsity):
    model = ks.prune(model, sparsity)
    for layer in model.layers:
        if isinstance(layer, ks.layers.SparseMixin):
            layer.prune_to(sparsity)
    return model


CASES = {
    "float": lambda: _mlp(),
    "binary": lambda: ks.quantize(_mlp(), "binary", skip_first=True),
    "magnitude_aware": lambda: ks.quantize(_mlp(), "magnitude_aware_sign"),
    "ternary": lambda: ks.quantize(_mlp(), "ternary"),
    "ste_tern_fixed": lambda: ks.quantize(_mlp(), quantizers.SteTern(0.05)),
    "uniform4": lambda: ks.quantize(_mlp(), 4),
    "uniform8_asymmetric": lambda: ks.quantize(_mlp(), quantizers.Uniform(8, symmetric=False)),
    "uniform_per_tensor": lambda: ks.quantize(_mlp(), quantizers.Uniform(3, per_channel=False)),
    "dorefa": lambda: ks.quantize(_mlp(), quantizers.DoReFa(2)),
    "lsq": lambda: ks.quantize(_mlp(), quantizers.LSQ(3)),
    "pruned": lambda: _pruned(_mlp(), 0.9),
    "binary_pruned": lambda: _pruned(ks.quantize(_mlp(), "binary"), 0.5),
    "uniform4_pruned": lambda: _pruned(ks.quantize(_mlp(), 4), 0.8),
    "cnn_uniform4": lambda: ks.quantize(_cnn(), 4),
    "cnn_magnitude_pruned": lambda: _pruned(ks.quantize(_cnn(), "magnitude_aware_sign"), 0.5),
}


def _input(model, seed=0):
    shape = (4,) + tuple(model.input_shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_gives_the_stripped_model(tmp_path, case):
    model = CASES[case]()
    path = os.path.join(tmp_path, "model.kspk")
    info = ks.export(model, path)
    assert info["bytes"] == os.path.getsize(path)
    loaded = ks.load_exported(path)
    plain = ks.strip(model)
    assert not any(isinstance(layer, ks.layers.SparseMixin) for layer in loaded.layers)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in plain.layers]
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in plain.layers]
    assert [w.name for w in loaded.weights] == [w.name for w in plain.weights]
    for ours, theirs in zip(loaded.weights, plain.weights):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(to_np(ours), to_np(theirs))
    x = _input(model)
    np.testing.assert_array_equal(to_np(loaded(x)), to_np(plain(x)))
    np.testing.assert_allclose(to_np(loaded(x)), to_np(model(x)), rtol=1e-5, atol=1e-5)


def test_quantized_weights_are_packed():
    model = CASES["magnitude_aware"]()
    info = ks.export(model, os.devnull if os.name != "nt" else "nul")
    encodings = {(w["layer"], w["weight"]): w for w in info["weights"]}
    hidden = encodings[("hidden", "kernel")]
    assert hidden["encoding"] == "affine"
    # 1 bit per weight plus one float32 alpha per output unit.
    assert hidden["bytes"] == 256 * 256 // 8 + 4 * 256 + 4
    uniform = {(w["layer"], w["weight"]): w
               for w in ks.export(CASES["uniform4"](), os.devnull)["weights"]}
    assert uniform[("hidden", "kernel")]["bytes"] == 256 * 256 // 2 + 4 * 256 + 4


def test_binary_mlp_file_is_much_smaller_than_float(tmp_path):
    float_path = os.path.join(tmp_path, "float.keras")
    _mlp().save(float_path)
    binary = ks.quantize(_mlp(), "binary", skip_first=True, skip_last=True)
    info = ks.export(binary, os.path.join(tmp_path, "binary.kspk"))
    binarized = [w for w in info["weights"] if w["layer"] == "hidden" and w["weight"] == "kernel"]
    assert binarized[0]["bytes"] * 25 <= 256 * 256 * 4
    assert info["bytes"] < os.path.getsize(float_path) / 4


def test_loaded_model_needs_no_keras_sparse_objects(tmp_path):
    path = os.path.join(tmp_path, "model.kspk")
    ks.export(CASES["uniform4_pruned"](), path)
    loaded = ks.load_exported(path)
    keras_path = os.path.join(tmp_path, "plain.keras")
    loaded.save(keras_path)
    with open(keras_path, "rb") as handle:
        assert b"keras_sparse" not in handle.read()
    assert "keras_sparse" not in loaded.to_json()


class _Net(keras.Model):
    """A subclassed model: two Dense layers and a BatchNorm."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(32, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.out = keras.layers.Dense(4)

    def call(self, x, training=None):
        return self.out(self.norm(self.hidden(x), training=training))


def _built_net(seed=0):
    keras.utils.set_random_seed(seed)
    net = _Net()
    net(np.zeros((1, 16), "float32"))
    return net


def test_subclassed_model_exports_its_weights_and_loads_into_a_plain_instance(tmp_path):
    net = ks.quantize(ks.prune(_built_net(), 0.75, schedule=ks.schedules.OneShot(0)), "binary",
                      skip_last=True)
    for layer in sparse_layers(net):
        layer.prune_to(0.75)
    x = np.random.RandomState(0).randn(8, 16).astype("float32")
    expected = keras.ops.convert_to_numpy(net(x, training=False))
    latent = [keras.ops.convert_to_numpy(layer.latent_weight("kernel")) for layer in sparse_layers(net)]
    path = os.path.join(tmp_path, "net.kspk")
    info = ks.export(net, path)
    # The model itself is untouched (still sparse and quantized, same latents).
    assert all(isinstance(layer, ks.layers.SparseMixin) for layer in (net.hidden, net.out))
    for layer, before in zip(sparse_layers(net), latent):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.latent_weight("kernel")),
                                      before)
    binary = [w for w in info["weights"] if w["layer"] == net.hidden.name and w["weight"] == "kernel"]
    assert binary and binary[0]["bytes"] < 16 * 32 / 8 + 16 * 32 / 8 + 64
    with pytest.raises(ValueError, match="subclassed"):
        ks.load_exported(path)
    fresh = _built_net(seed=5)
    loaded = ks.load_exported(path, model=fresh)
    assert loaded is fresh
    assert type(loaded.hidden) is keras.layers.Dense
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)), expected,
                               rtol=1e-5, atol=1e-5)
    stripped_kernel = keras.ops.convert_to_numpy(loaded.hidden.kernel)
    assert set(np.unique(np.abs(stripped_kernel))) <= {0.0, 1.0}
    assert np.mean(stripped_kernel == 0) == pytest.approx(0.75, abs=0.01)


def test_loading_into_a_mismatched_or_unbuilt_model_raises_and_writes_nothing(tmp_path):
    path = os.path.join(tmp_path, "net.kspk")
    ks.export(_built_net(), path)
    other = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32), keras.layers.Dense(4),
                              keras.layers.Dense(4)])
    before = [w.copy() for w in other.get_weights()]
    with pytest.raises(ValueError, match="layers"):
        ks.load_exported(path, model=other)
    wrong = _Net()
    wrong(np.zeros((1, 8), "float32"))
    wrong_before = [w.copy() for w in wrong.get_weights()]
    with pytest.raises(ValueError, match="shapes"):
        ks.load_exported(path, model=wrong)
    for a, b in zip(wrong.get_weights(), wrong_before):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(other.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unbuilt"):
        ks.load_exported(path, model=_Net())


def test_unbuilt_models_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unbuilt"):
        ks.export(_Net(), os.path.join(tmp_path, "a.kspk"))
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="unbuilt"):
        ks.export(unbuilt, os.path.join(tmp_path, "b.kspk"))


def test_not_an_export_is_rejected(tmp_path):
    import json
    import zipfile

    path = os.path.join(tmp_path, "other.zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.json", json.dumps({"format": "something"}))
        archive.writestr("weights.npz", b"")
    with pytest.raises(ValueError, match="not a keras_sparse packed export"):
        ks.load_exported(path)
