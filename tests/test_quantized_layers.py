"""Quantizers inside the layer family: effective kernel = mask x
quantizer(latent), input quantization, learnable quantizer state (LSQ, PACT)
owned and saved by the layer, parity with the Keras parent, bad input."""

import inspect
import os

import keras
import numpy as np
import pytest

import keras_sparse as ks
from conftest import layer_grads
from conftest import to_np
from keras_sparse import quantizers
from keras_sparse import testing
from keras_sparse.layers.quantization import seed_states

# class name -> (init kwargs, input shape); None = integer ids for Embedding.
LAYERS = {
    "SparseDense": ({"units": 4}, (2, 8)),
    "SparseConv1D": ({"filters": 4, "kernel_size": 3}, (2, 8, 4)),
    "SparseConv2D": ({"filters": 4, "kernel_size": 3, "strides": 2}, (2, 7, 7, 4)),
    "SparseConv3D": ({"filters": 4, "kernel_size": 2}, (2, 4, 4, 4, 4)),
    "SparseConv1DTranspose": ({"filters": 4, "kernel_size": 3}, (2, 5, 4)),
    "SparseConv2DTranspose": ({"filters": 4, "kernel_size": 3, "strides": 2}, (2, 4, 4, 4)),
    "SparseConv3DTranspose": ({"filters": 4, "kernel_size": 2}, (2, 3, 3, 3, 4)),
    "SparseDepthwiseConv1D": ({"kernel_size": 3, "depth_multiplier": 2}, (2, 8, 4)),
    "SparseDepthwiseConv2D": ({"kernel_size": 3}, (2, 6, 6, 4)),
    "SparseSeparableConv1D": ({"filters": 4, "kernel_size": 3}, (2, 8, 4)),
    "SparseSeparableConv2D": ({"filters": 4, "kernel_size": 3, "depth_multiplier": 2},
                              (2, 6, 6, 4)),
    "SparseEinsumDense": ({"equation": "abc,cd->abd", "output_shape": (3, 4), "bias_axes": "d"},
                          (2, 3, 8)),
    "SparseEmbedding": ({"input_dim": 10, "output_dim": 4}, None),
}
NAMES = sorted(LAYERS)
KERAS_PARENT = {cls: parent for parent, cls in ks.layers.SPARSE_CLASS_FOR.items()}


def _input(name, seed=0):
    shape = LAYERS[name][1]
    if shape is None:
        return np.array([[0, 3, 9, 3, 1], [2, 2, 7, 0, 5]], dtype="int32")
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _built(name, **extra):
    layer = getattr(ks.layers, name)(**LAYERS[name][0], **extra)
    layer.build(_input(name).shape)
    rng = np.random.default_rng(1)
    for variable in layer.trainable_weights:
        if len(variable.shape):
            variable.assign(rng.standard_normal(variable.shape).astype("float32"))
    return layer


def _identical(a, b):
    a, b = to_np(a), to_np(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), np.max(np.abs(a.astype("float64") - b))



# --------------------------------------------------------------- signature
@pytest.mark.parametrize("name", NAMES)
def test_signature_has_larq_quantizer_arguments(name):
    params = inspect.signature(getattr(ks.layers, name)).parameters
    for arg in ("kernel_quantizer", "input_quantizer"):
        assert params[arg].default is None
        assert params[arg].kind is inspect.Parameter.KEYWORD_ONLY


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", NAMES)
def test_identity_quantizer_with_all_ones_mask_equals_keras_parent(name):
    extra = {"kernel_quantizer": "identity"}
    if LAYERS[name][1] is not None:
        extra["input_quantizer"] = "identity"
    ours = _built(name, **extra)
    parent = KERAS_PARENT[type(ours)](**LAYERS[name][0])
    x = _input(name)
    parent.build(x.shape)
    parent.set_weights(ours.stripped_weights())
    for latent, theirs in zip([w for w in ours.weights if w.dtype != "bool"], parent.weights):
        _identical(latent, theirs)
    out = ours(x)
    _identical(out, parent(x))
    cotangent = np.random.default_rng(2).standard_normal(out.shape).astype("float32")
    our_grad_x, our_grads = layer_grads(ours, x, cotangent)
    their_grad_x, their_grads = layer_grads(parent, x, cotangent)
    if our_grad_x is not None:
        _identical(our_grad_x, their_grad_x)
    assert len(our_grads) == len(their_grads)
    for a, b in zip(our_grads, their_grads):
        _identical(a, b)


# ------------------------------------------------------- binary and pruned
def test_binary_and_pruned_in_one_layer():
    layer = _built("SparseDense", kernel_quantizer="magnitude_aware_sign", masked=True)
    layer.prune_to(0.5)
    mask = to_np(layer.get_mask("kernel"))
    latent = to_np(layer.latent_weight("kernel"))
    kernel = to_np(layer.kernel)
    assert not kernel[~mask].any()
    # alpha per output unit over the kept weights.
    alpha = (np.abs(latent) * mask).sum(axis=0) / mask.sum(axis=0)
    expected = np.where(latent >= 0, 1.0, -1.0) * alpha
    np.testing.assert_allclose(kernel[mask], expected[mask], rtol=1e-6)
    for column in range(kernel.shape[1]):
        values = np.unique(np.abs(kernel[mask[:, column], column]))
        np.testing.assert_allclose(values, [alpha[column]], rtol=1e-6)
    assert abs(layer.sparsity - 0.5) < 1e-9

    plain = _built("SparseDense", kernel_quantizer="ste_sign", masked=True)
    plain.prune_to(0.75)
    mask = to_np(plain.get_mask("kernel"))
    kernel = to_np(plain.kernel)
    assert not kernel[~mask].any()
    np.testing.assert_array_equal(
        kernel[mask], np.where(to_np(plain.latent_weight("kernel"))[mask] >= 0, 1.0, -1.0))


@pytest.mark.parametrize("alias", sorted(quantizers.REGISTRY))
def test_pruned_latent_drift_does_not_change_the_quantized_kernel(alias):
    quantizer = quantizers.get(alias)
    layer = _built("SparseDense", kernel_quantizer=quantizer, masked=True)
    layer.prune_to(0.5)
    before = to_np(layer.kernel)
    mask = to_np(layer.get_mask("kernel"))
    # Optimizer momentum moves stored weights at pruned positions; an
    # elementwise quantizer ignores them, the others see them masked.
    latent = to_np(layer.latent_weight("kernel"))
    layer.latent_weight("kernel").assign(np.where(mask, latent, 100.0).astype("float32"))
    np.testing.assert_array_equal(to_np(layer.kernel), before)
    assert not to_np(layer.kernel)[~mask].any()


# -------------------------------------------------------------- behaviour
def test_input_quantizer_feeds_quantized_inputs_to_the_parent():
    layer = _built("SparseConv2D", input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    x = _input("SparseConv2D")
    parent = keras.layers.Conv2D(**LAYERS["SparseConv2D"][0])
    parent.build(x.shape)
    parent.set_weights(layer.stripped_weights())
    _identical(layer(x), parent(np.where(x >= 0, 1.0, -1.0).astype("float32")))
    assert set(np.unique(to_np(layer.kernel))) == {-1.0, 1.0}


def test_effective_weights_use_each_layout_for_per_channel_statistics():
    layer = _built("SparseDepthwiseConv2D", kernel_quantizer="magnitude_aware_sign")
    latent = to_np(layer.latent_weight("kernel"))  # (kh, kw, channels, multiplier)
    alpha = np.abs(latent).mean(axis=(0, 1), keepdims=True)
    np.testing.assert_allclose(to_np(layer.kernel), alpha * np.where(latent >= 0, 1, -1), rtol=1e-6)
    layer = _built("SparseConv2DTranspose", kernel_quantizer=quantizers.Uniform(3))
    latent = to_np(layer.latent_weight("kernel"))  # (kh, kw, filters, in)
    scale = np.abs(latent).max(axis=(0, 1, 3), keepdims=True) / 3
    kernel = to_np(layer.kernel)
    np.testing.assert_allclose(kernel, np.clip(np.round(latent / scale), -3, 3) * scale, rtol=1e-5)
    sep = _built("SparseSeparableConv2D", kernel_quantizer="ste_sign")
    for name in sep.sparse_weight_names:
        assert set(np.unique(to_np(sep.effective_weight(name)))) <= {-1.0, 1.0}


def test_lsq_step_is_a_trained_variable_of_the_layer():
    layer = _built("SparseDense", kernel_quantizer=quantizers.LSQ(bits=4), masked=True)
    step = layer.quantizer_state("kernel")["step"]
    assert step.trainable and any(w is step for w in layer.trainable_weights)
    assert step.path.endswith("kernel_quantizer_step")
    latent = to_np(layer.latent_weight("kernel"))
    # The initial value comes from the weights at build time (random init);
    # initialize_quantizers() recomputes it from the current weights.
    layer.initialize_quantizers()
    assert float(to_np(step)) == pytest.approx(2 * np.abs(latent).mean() / np.sqrt(7), rel=1e-5)
    layer.prune_to(0.5)
    layer.initialize_quantizers()
    kept = latent[to_np(layer.get_mask("kernel"))]
    assert float(to_np(step)) == pytest.approx(2 * np.abs(kept).mean() / np.sqrt(7), rel=1e-5)
    model = keras.Sequential([keras.Input((8,)), layer])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = _input("SparseDense", seed=3)
    before = float(to_np(step))
    model.fit(x, np.ones((2, 4), "float32"), epochs=2, verbose=0)
    assert float(to_np(step)) != before


def test_replacing_a_quantizer_replaces_its_state():
    layer = _built("SparseDense", kernel_quantizer="lsq", input_quantizer="pact")
    assert len(layer.quantizer_variables()) == 2
    assert len(layer.trainable_weights) == 4
    layer.configure_quantization("ste_sign", None)
    assert layer.quantizer_variables() == []
    assert len(layer.trainable_weights) == 2
    # Only quantized, never pruned: no mask.
    assert [w.path.split("/")[-1] for w in layer.weights] == ["kernel", "bias"]
    layer.configure_quantization(quantizers.LSQ(bits=3), None)
    assert len(layer.quantizer_variables()) == 1


def test_stochastic_kernel_is_random_in_training_and_sign_at_inference():
    layer = _built("SparseDense", kernel_quantizer="stochastic_binary")
    x = _input("SparseDense")
    a, b = to_np(layer(x, training=True)), to_np(layer(x, training=True))
    assert not np.array_equal(a, b)
    _identical(layer(x, training=False), layer(x))
    assert set(np.unique(to_np(layer.kernel))) == {-1.0, 1.0}


@pytest.mark.parametrize("kernel_quantizer, input_quantizer", [
    ("ste_sign", "ste_sign"),
    (quantizers.LSQ(bits=4), quantizers.PACT(bits=4)),
    ("magnitude_aware_sign", quantizers.LSQ(bits=3, signed=False)),
])
def test_keras_file_round_trip_keeps_latent_weights_and_state(tmp_path, kernel_quantizer,
                                                              input_quantizer):
    layer = ks.layers.SparseDense(4, kernel_quantizer=kernel_quantizer,
                                  input_quantizer=input_quantizer, masked=True)
    model = keras.Sequential([keras.Input((8,)), layer])
    model.compile("adam", "mse")
    x = np.random.default_rng(0).standard_normal((16, 8)).astype("float32")
    model.fit(x, np.ones((16, 4), "float32"), epochs=1, verbose=0)
    layer.prune_to(0.5)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    new = loaded.layers[0]
    assert new.kernel_quantizer == layer.kernel_quantizer
    assert new.input_quantizer == layer.input_quantizer
    assert [w.name for w in loaded.weights] == [w.name for w in model.weights]
    for a, b in zip(model.weights, loaded.weights):
        _identical(a, b)
    # The float latent kernel is what was saved, not the quantized one.
    assert len(np.unique(to_np(new.latent_weight("kernel")))) > 10
    _identical(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


SEEDED_LAYERS = {
    "SparseDense": lambda q: ks.layers.SparseDense(16, kernel_quantizer=q, input_quantizer=q),
    "LowRankDense": lambda q: ks.layers.LowRankDense(16, rank=2, kernel_quantizer=q),
    "ColumnSampledDense": lambda q: ks.layers.ColumnSampledDense(16, keep=4, kernel_quantizer=q),
}


@pytest.mark.parametrize("kind", sorted(SEEDED_LAYERS))
@pytest.mark.parametrize("seed", [None, 5])
def test_keras_file_round_trip_continues_stochastic_draws(tmp_path, seed, kind):
    layer = SEEDED_LAYERS[kind](quantizers.StochasticBinary(seed=seed))
    model = keras.Sequential([keras.Input((8,)), layer])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x = np.random.default_rng(0).standard_normal((32, 8)).astype("float32") * 0.3
    model.fit(x, np.ones((32, 16), "float32"), batch_size=8, epochs=1, verbose=0)
    model(x, training=True)  # the generators have moved past their initial state
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    new = loaded.layers[0]
    layer_seeds = seed_states(layer._quantizer_state)
    assert len(layer_seeds) == (2 if kind != "ColumnSampledDense" else 1)
    for a, b in zip(layer_seeds, seed_states(new._quantizer_state)):
        _identical(a, b)
    # The weights a user sees are unchanged: the seeds are saved, not weights.
    assert [w.name for w in loaded.weights] == [w.name for w in model.weights]
    for _ in range(3):
        _identical(loaded(x, training=True), model(x, training=True))


@pytest.mark.parametrize("kind", sorted(SEEDED_LAYERS))
def test_files_without_seed_states_still_load(tmp_path, kind, monkeypatch):
    layer = SEEDED_LAYERS[kind](quantizers.StochasticBinary())
    model = keras.Sequential([keras.Input((8,)), layer])
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    path = os.path.join(tmp_path, "model.keras")
    # As written before seed states were saved: the weights only.
    with monkeypatch.context() as patch:
        patch.setattr(type(layer), "save_own_variables", keras.layers.Layer.save_own_variables)
        model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model.weights, loaded.weights):
        _identical(a, b)
    _identical(loaded(x), model(x))


@pytest.mark.parametrize("name", ["SparseDense", "SparseConv2D", "SparseDepthwiseConv2D",
                                  "SparseEmbedding"])
def test_layer_contract_with_quantizers(name):
    kwargs = dict(LAYERS[name][0], kernel_quantizer=quantizers.LSQ(bits=4))
    if LAYERS[name][1] is not None:
        kwargs["input_quantizer"] = "ste_sign"
    x = _input(name)
    testing.run_layer_test(
        getattr(ks.layers, name),
        kwargs,
        input_data=x,
        expected_num_non_trainable_weights=1,
    )


def test_config_has_quantizers_and_plain_config_does_not():
    layer = ks.layers.SparseDense(3, kernel_quantizer=4, input_quantizer="ste_sign")
    config = layer.get_config()
    assert config["kernel_quantizer"]["class_name"] == "Uniform"
    assert config["kernel_quantizer"]["config"]["bits"] == 4
    revived = ks.layers.SparseDense.from_config(config)
    assert revived.kernel_quantizer == quantizers.Uniform(bits=4)
    assert revived.input_quantizer == quantizers.SteSign()
    plain = layer.plain_config()
    assert "kernel_quantizer" not in plain and "input_quantizer" not in plain
    keras.layers.Dense.from_config(plain)


def test_mixed_precision_forward():
    layer = ks.layers.SparseDense(4, kernel_quantizer=quantizers.LSQ(4),
                                  input_quantizer="ste_sign", dtype="mixed_float16")
    out = layer(_input("SparseDense"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert all(w.dtype in ("float32", "bool") for w in layer.weights)
    assert np.all(np.isfinite(to_np(out)))


# ------------------------------------------------------------ bad input
@keras.saving.register_keras_serializable(package="keras_sparse_tests")
class SparseNorm(ks.layers.SparseMixin, keras.layers.LayerNormalization):
    """A family member with no kernel."""

    sparse_weight_layouts = {}


@pytest.mark.parametrize("make, message", [
    (lambda: SparseNorm(kernel_quantizer="ste_sign"), "kernel_quantizer=SteSign"),
    (lambda: ks.layers.SparseEmbedding(10, 4, input_quantizer="ste_sign"),
     "input_quantizer=SteSign"),
    (lambda: ks.layers.SparseDense(3, kernel_quantizer="sign"), "kernel_quantizer='sign'"),
    (lambda: ks.layers.SparseDense(3, input_quantizer=12), "input_quantizer=12"),
    (lambda: ks.layers.SparseDense(3, kernel_quantizer=quantizers.Uniform), "kernel_quantizer="),
])
def test_bad_quantizer_arguments(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_bad_reconfiguration_leaves_the_layer_unchanged():
    layer = _built("SparseDense", kernel_quantizer="lsq")
    weights = [w.path for w in layer.weights]
    with pytest.raises(ValueError, match="input_quantizer='nope'"):
        layer.configure_quantization("ste_sign", "nope")
    assert layer.kernel_quantizer == quantizers.LSQ()
    assert [w.path for w in layer.weights] == weights


def test_layer_without_kernel_accepts_input_quantizer_only():
    layer = SparseNorm(input_quantizer="ste_sign")
    x = _input("SparseDense")
    expected = keras.layers.LayerNormalization()(np.where(x >= 0, 1.0, -1.0).astype("float32"))
    np.testing.assert_allclose(to_np(layer(x)), to_np(expected), rtol=1e-6)
