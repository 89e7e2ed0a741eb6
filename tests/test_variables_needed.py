"""A layer holds only the variables its methods need: a layer that is
quantized but never pruned carries no mask; masks appear when it is pruned
(in either order with quantization), survive ``.keras`` round trips with
or without a schedule, and are never counted as parameters."""

import os

import keras
import numpy as np
import pytest

import keras_sparse as ks
from conftest import to_np
from keras_sparse.utils import sparse_layers

FEATURES = 12


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((FEATURES,))
    h = keras.layers.Dense(16, activation="relu", name="d1")(inp)
    h = keras.layers.Dense(8, activation="relu", name="d2")(h)
    return keras.Model(inp, keras.layers.Dense(4, name="d3")(h))


class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d1 = keras.layers.Dense(16, activation="relu", name="d1")
        self.d2 = keras.layers.Dense(4, name="d2")

    def call(self, x):
        return self.d2(self.d1(x))


def _net():
    keras.utils.set_random_seed(0)
    model = Net()
    model(np.zeros((1, FEATURES), "float32"))
    return model


def _x(n=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, FEATURES)).astype("float32")


def _sparse(model):
    return sparse_layers(model)


def _mask_variables(layer):
    return [w for w in layer.weights if w.path.endswith("_mask")]


def _assert_identical(a, b):
    a, b = to_np(a), to_np(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def _fit(model, callbacks=()):
    model.compile(keras.optimizers.SGD(0.05), "mse")
    y = np.random.default_rng(1).standard_normal((16, 4)).astype("float32")
    model.fit(_x(), y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=list(callbacks))


# ----------------------------------------------------------- quantize only
@pytest.mark.parametrize("weights", ["binary", 8, ks.quantizers.LSQ(4)],
                         ids=["binary", "8-bit", "lsq"])
def test_quantized_layers_have_no_mask(weights):
    mlp = _mlp()
    quantized = ks.quantize(mlp, weights)
    layers = _sparse(quantized)
    assert len(layers) == 3
    for layer in layers:
        plain = mlp.get_layer(layer.name)
        assert not layer.has_masks and layer.get_mask("kernel") is None
        assert _mask_variables(layer) == []
        assert len(layer.weights) == len(plain.weights) + len(layer.quantizer_variables())
        assert layer.count_params() == plain.count_params() + sum(
            int(np.prod(v.shape)) for v in layer.quantizer_variables())
        assert layer.sparsity == 0.0 and layer.weight_sparsity("kernel") == 0.0
        assert layer.get_config()["masked"] is False
    if weights == "binary":  # ste_sign has no state: exactly Keras' variables
        assert quantized.count_params() == mlp.count_params()
    x = _x()
    _assert_identical(quantized(x), ks.strip(quantized)(x))


def test_quantized_layer_trains_and_reports():
    quantized = ks.quantize(_mlp(), "binary")
    _fit(quantized)
    for layer in _sparse(quantized):
        kernel = to_np(layer.kernel)
        assert set(np.unique(kernel)) <= {-1.0, 1.0}
        layer.reapply_masks()  # nothing to do, and no error
    result = ks.report(quantized, print_fn=None)
    assert result.totals["mask_bytes"] == 0
    assert result.totals["params"] == quantized.count_params()
    assert all(row["bits"] == 1 for row in result.rows)


def test_quantized_model_exports_and_reloads(tmp_path):
    quantized = ks.quantize(_mlp(), 8)
    path = os.path.join(tmp_path, "model.kspk")
    ks.export(quantized, path)
    loaded = ks.load_exported(path)
    x = _x()
    np.testing.assert_allclose(to_np(loaded(x)), to_np(quantized(x)), rtol=1e-5, atol=1e-5)


# ------------------------------------------------ pruning after quantizing
@pytest.mark.parametrize("order", ["quantize_then_prune", "prune_then_quantize"])
def test_quantize_and_prune_compose_with_masks(order):
    mlp = _mlp()
    if order == "quantize_then_prune":
        model = ks.prune(ks.quantize(mlp, "binary"), 0.5)
    else:
        model = ks.quantize(ks.prune(mlp, 0.5), "binary")
    for layer in _sparse(model):
        assert layer.has_masks and layer.kernel_quantizer == ks.quantizers.SteSign()
        assert [w.path.split("/")[-1] for w in _mask_variables(layer)] == ["kernel_mask"]
        assert layer.schedule is not None and layer.get_config()["masked"] is True
        assert layer.count_params() == mlp.get_layer(layer.name).count_params()
    _fit(model, [ks.callbacks.Pruning()])
    for layer in _sparse(model):
        assert layer.sparsity == pytest.approx(0.5, abs=0.02)
        mask = to_np(layer.get_mask("kernel"))
        assert not to_np(layer.kernel)[~mask].any()


def test_pruned_layers_count_params_like_keras():
    mlp = _mlp()
    pruned = ks.prune(mlp, 0.9)
    ours = [layer.count_params() for layer in pruned.layers]
    assert ours == [layer.count_params() for layer in mlp.layers]
    # Keras' model total sums model.weights, masks included (documented).
    masks = sum(int(np.prod(m.shape)) for layer in _sparse(pruned) for m in _mask_variables(layer))
    assert pruned.count_params() == mlp.count_params() + masks


def test_gradient_probes_are_not_parameters():
    layer = _sparse(ks.prune(_mlp(), 0.5))[0]
    before = layer.count_params()
    layer.enable_gradient_probe()
    assert layer.has_gradient_probe and layer.count_params() == before


def test_configure_pruning_adds_masks_to_a_built_layer():
    layer = ks.layers.SparseDense(4, kernel_quantizer="ste_sign")
    layer.build((None, 6))
    assert not layer.has_masks
    with pytest.raises(ValueError, match="no masks"):
        layer.prune_to(0.5)
    layer.configure_pruning(schedule=0.5)
    assert layer.has_masks and to_np(layer.kernel_mask).all()
    layer.prune_to(0.5)
    assert layer.sparsity == 0.5
    # Back to no schedule: the masks stay (frozen).
    layer.configure_pruning(schedule=None)
    assert layer.has_masks and layer.get_config()["masked"] is True
    with pytest.raises(ValueError, match="already has masks"):
        layer.configure_pruning(masked=False)


def test_configure_pruning_adds_masks_to_a_locked_lora_layer():
    layer = ks.layers.SparseDense(4, lora_rank=2, kernel_quantizer=4)
    layer.build((None, 8))
    assert not layer.has_masks
    layer.configure_pruning(schedule=0.5)
    assert layer.has_masks
    with pytest.raises(ValueError):  # Keras' lock is back in place
        layer.add_weight(shape=(1,), name="late")


def test_masked_argument_validation():
    with pytest.raises(ValueError, match="needs masks"):
        ks.layers.SparseDense(4, schedule=0.5, masked=False)
    with pytest.raises(ValueError, match="bool"):
        ks.layers.SparseDense(4, masked="yes")
    layer = ks.layers.SparseDense(4, masked=True)
    layer.build((None, 3))
    assert layer.has_masks and layer.schedule is None


def test_sparse_initializer_makes_a_masked_layer():
    layer = ks.layers.SparseDense(
        8, kernel_initializer=ks.initializers.SparseInitializer(sparsity=0.75, seed=1))
    layer.build((None, 16))
    assert layer.has_masks
    assert layer.sparsity == pytest.approx(0.75, abs=1 / 128)


# ------------------------------------------------------------ .keras files
def _round_trip(model, tmp_path):
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for before, after in zip(model.weights, loaded.weights):
        _assert_identical(before, after)
    for old, new in zip(_sparse(model), _sparse(loaded)):
        assert new.has_masks == old.has_masks
        assert new.schedule == old.schedule
    x = _x()
    _assert_identical(loaded(x), model(x))
    return loaded


def test_keras_round_trip_quantize_only(tmp_path):
    model = ks.quantize(_mlp(), ks.quantizers.LSQ(4), activations="ste_sign")
    _fit(model)
    loaded = _round_trip(model, tmp_path)
    assert not any(layer.has_masks for layer in _sparse(loaded))


def test_keras_round_trip_pruned(tmp_path):
    model = ks.prune(_mlp(), 0.5)
    _fit(model, [ks.callbacks.Pruning()])
    loaded = _round_trip(model, tmp_path)
    assert all(layer.sparsity == pytest.approx(0.5, abs=0.02) for layer in _sparse(loaded))


def test_keras_round_trip_pruned_at_init_keeps_fixed_masks(tmp_path):
    model = ks.prune_at_init(_mlp(), sparsity=0.5, scorer="magnitude")
    assert all(layer.schedule is None and layer.has_masks for layer in _sparse(model))
    _fit(model)
    loaded = _round_trip(model, tmp_path)
    for layer in _sparse(loaded):
        assert layer.schedule is None and layer.sparsity == pytest.approx(0.5, abs=0.02)


def test_config_written_before_masked_existed_loads_masked():
    layer = ks.layers.SparseDense(4, kernel_quantizer="ste_sign")
    config = layer.get_config()
    assert config["masked"] is False
    del config["masked"]
    legacy = ks.layers.SparseDense.from_config(config)
    legacy.build((None, 3))
    assert legacy.has_masks and legacy.get_config()["masked"] is True
    # A plain Keras config (no keras_sparse keys) is not a legacy one.
    plain = ks.layers.SparseDense.from_config(keras.layers.Dense(4).get_config())
    plain.build((None, 3))
    assert not plain.has_masks


# ------------------------------------------------- subclassed, in place
def test_subclassed_model_quantized_then_pruned_in_place(tmp_path):
    model = _net()
    x = _x()
    assert ks.quantize(model, "binary") is model
    for layer in (model.d1, model.d2):
        assert isinstance(layer, ks.layers.SparseDense) and not layer.has_masks
        assert _mask_variables(layer) == []
    _fit(model)
    plain_count = model.count_params()
    quantized_out = to_np(model(x))

    report = ks.report(model, print_fn=None)
    assert report.totals["mask_bytes"] == 0
    path = os.path.join(tmp_path, "net.kspk")
    ks.export(model, path)

    assert ks.prune(model, 0.5) is model
    for layer in (model.d1, model.d2):
        assert layer.has_masks and len(_mask_variables(layer)) == 1
        assert any(v is layer.kernel_mask for v in model.non_trainable_variables)
    assert model.count_params() == plain_count + sum(
        int(np.prod(layer.kernel_mask.shape)) for layer in (model.d1, model.d2))
    _assert_identical(model(x), quantized_out)  # all-ones masks change nothing
    _fit(model, [ks.callbacks.Pruning()])
    for layer in (model.d1, model.d2):
        mask = to_np(layer.get_mask("kernel"))
        assert layer.sparsity == pytest.approx(0.5, abs=0.02)
        assert not to_np(layer.kernel)[~mask].any()
        assert not to_np(layer.latent_weight("kernel"))[~mask].any()

    fresh = _net()
    loaded = ks.load_exported(path, model=fresh)
    np.testing.assert_allclose(to_np(loaded(x)), quantized_out, rtol=1e-5, atol=1e-5)

    stripped = ks.strip(model)
    assert type(stripped.d1) is keras.layers.Dense


def test_subclassed_model_pruned_at_init_in_place():
    model = ks.prune_at_init(_net(), sparsity=0.5, scorer="magnitude")
    for layer in (model.d1, model.d2):
        assert layer.schedule is None and layer.has_masks
    _fit(model)
    for layer in (model.d1, model.d2):
        mask = to_np(layer.get_mask("kernel"))
        assert not to_np(layer.latent_weight("kernel"))[~mask].any()
