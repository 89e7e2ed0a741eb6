"""``ks.quantize`` on whole models (Sequential, functional, nested,
subclassed), its composition with ``ks.prune`` in either order, validation
that leaves the model untouched, ``strip`` to plain Keras (and on to Keras
int8), and the report's bits, packed bytes and 1-bit MAC share."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_sparse as ks
from conftest import to_np
from keras_sparse import quantizers
from keras_sparse.layers import SparseMixin
from keras_sparse.utils import walk_layers

FEATURES = 8
DENSE = ("d1", "d2", "d3")


# ----------------------------------------------------------------- models
def _sequential():
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Dense(6, activation="relu", name="d2"),
        keras.layers.Dense(4, name="d3"),
    ])


def _functional():
    inp = keras.Input((FEATURES,))
    h = keras.layers.Dense(16, activation="relu", name="d1")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    a = keras.layers.Dense(6, activation="relu", name="d2")(h)
    b = keras.layers.Dense(6, name="side")(h)
    out = keras.layers.Dense(4, name="d3")(keras.layers.Add(name="add")([a, b]))
    return keras.Model(inp, out)


def _nested():
    inner = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Dense(6, activation="relu", name="d2"),
    ], name="inner")
    inp = keras.Input((FEATURES,))
    return keras.Model(inp, keras.layers.Dense(4, name="d3")(inner(inp)))


class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d1 = keras.layers.Dense(16, activation="relu", name="d1")
        self.bn = keras.layers.BatchNormalization(name="bn")
        self.d2 = keras.layers.Dense(6, activation="relu", name="d2")
        self.d3 = keras.layers.Dense(4, name="d3")

    def call(self, x, training=None):
        return self.d3(self.d2(self.bn(self.d1(x), training=training)))


def _subclassed(built=True):
    model = Net()
    if built:
        model(np.zeros((1, FEATURES), "float32"))
    return model


BUILDERS = {
    "sequential": _sequential,
    "functional": _functional,
    "nested": _nested,
    "subclassed": _subclassed,
    "subclassed_unbuilt": lambda: _subclassed(built=False),
}


def _make(kind, seed=0):
    keras.utils.set_random_seed(seed)
    return BUILDERS[kind]()


def _x(n=32, seed=0):
    return np.random.RandomState(seed).randn(n, FEATURES).astype("float32")


def _y(n=32, seed=1):
    return np.random.RandomState(seed).randint(0, 4, size=n)


def _leaves(model):
    return [layer for layer in walk_layers(model) if not isinstance(layer, keras.Model)]


def _by_name(model):
    return {layer.name: layer for layer in _leaves(model)}


def _snapshot(model):
    return {
        "classes": [(layer.name, type(layer)) for layer in _leaves(model)],
        "values": [to_np(v).copy() for v in model.variables],
        "quantizers": [getattr(layer, "kernel_quantizer", None) for layer in _leaves(model)],
    }


def _assert_untouched(model, snapshot):
    now = _snapshot(model)
    assert now["classes"] == snapshot["classes"]
    assert now["quantizers"] == snapshot["quantizers"]
    assert len(now["values"]) == len(snapshot["values"])
    for a, b in zip(now["values"], snapshot["values"]):
        np.testing.assert_array_equal(a, b)


def _compile_fit(model, epochs=1):
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model.fit(_x(), _y(), batch_size=8, epochs=epochs, shuffle=False, verbose=0)


def _sign(w):
    return np.where(w >= 0, 1.0, -1.0).astype("float32")


# ------------------------------------------------------------ conversion
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_quantize_every_model_kind(kind):
    model = _make(kind)
    built = model.built
    original = _snapshot(model) if built else None
    kernels = {n: to_np(_by_name(model)[n].kernel) for n in DENSE} if built else None

    quantized = ks.quantize(model, "binary")

    subclassed = kind.startswith("subclassed")
    assert (quantized is model) == subclassed
    if built and not subclassed:
        _assert_untouched(model, original)
    x = _x()
    quantized(x)  # builds the unbuilt subclassed model
    layers = _by_name(quantized)
    for name in DENSE:
        layer = layers[name]
        assert isinstance(layer, ks.layers.SparseDense) and isinstance(layer, keras.layers.Dense)
        assert layer.kernel_quantizer == quantizers.SteSign()
        # Quantized, not pruned: no mask variable.
        assert layer.schedule is None and not layer.has_masks
        assert layer.get_mask("kernel") is None and not hasattr(layer, "kernel_mask")
        latent = to_np(layer.latent_weight("kernel"))
        if built:
            np.testing.assert_array_equal(latent, kernels[name])  # float weights kept
        np.testing.assert_array_equal(to_np(layer.kernel), _sign(latent))
    assert type(layers["bn"]) is keras.layers.BatchNormalization
    history = _compile_fit(quantized)
    assert np.isfinite(history.history["loss"][-1])
    for name in DENSE:
        kernel = to_np(layers[name].kernel)
        np.testing.assert_array_equal(kernel, _sign(to_np(layers[name].latent_weight("kernel"))))


def test_quantized_forward_equals_numpy_reference():
    model = _make("sequential")
    model.get_layer("bn").set_weights([np.linspace(0.5, 1.5, 16).astype("float32")] * 2
                                      + [np.zeros(16, "float32"), np.ones(16, "float32")])
    quantized = ks.quantize(model, "binary", activations="ste_sign", skip_first=True)
    x = _x()
    weights = {n: [to_np(w) for w in model.get_layer(n).weights] for n in DENSE}
    gamma, beta, mean, var = [to_np(w) for w in model.get_layer("bn").weights]
    h = np.maximum(x @ weights["d1"][0] + weights["d1"][1], 0)  # float first layer
    h = gamma * (h - mean) / np.sqrt(var + 1e-3) + beta
    h = np.maximum(_sign(h) @ _sign(weights["d2"][0]) + weights["d2"][1], 0)
    expected = _sign(h) @ _sign(weights["d3"][0]) + weights["d3"][1]
    np.testing.assert_allclose(to_np(quantized(x)), expected, rtol=1e-5, atol=1e-5)
    layers = _by_name(quantized)
    assert type(layers["d1"]) is keras.layers.Dense
    assert layers["d2"].input_quantizer == quantizers.SteSign()


def test_identity_quantizer_keeps_outputs_bit_identical():
    model = _make("functional")
    x = _x()
    quantized = ks.quantize(model, "identity", activations="identity")
    np.testing.assert_array_equal(to_np(quantized(x)), to_np(model(x)))


@pytest.mark.parametrize("weights, expected", [
    ("binary", quantizers.SteSign()),
    ("ternary", quantizers.SteTern(ternary_weight_networks=True, scaled=True)),
    (1, quantizers.SteSign()),
    (4, quantizers.Uniform(bits=4)),
    (8, quantizers.Uniform(bits=8)),
    ("magnitude_aware_sign", quantizers.MagnitudeAwareSign()),
    (quantizers.DoReFa(bits=3), quantizers.DoReFa(bits=3)),
])
def test_weights_argument_forms(weights, expected):
    quantized = ks.quantize(_make("sequential"), weights)
    for name in DENSE:
        assert quantized.get_layer(name).kernel_quantizer == expected
        assert quantized.get_layer(name).input_quantizer is None


def test_activations_only_and_selection():
    model = _make("functional")
    quantized = ks.quantize(model, None, activations="ste_sign", layers=["d2", "d3"])
    layers = _by_name(quantized)
    assert type(layers["d1"]) is keras.layers.Dense and type(layers["side"]) is keras.layers.Dense
    for name in ("d2", "d3"):
        assert layers[name].kernel_quantizer is None
        assert layers[name].input_quantizer == quantizers.SteSign()
    quantized = ks.quantize(model, 4, layers=lambda layer: layer.name.startswith("d"))
    assert {n for n, l in _by_name(quantized).items() if isinstance(l, SparseMixin)} == set(DENSE)
    quantized = ks.quantize(model, 4, layers="d[12]")
    assert {n for n, l in _by_name(quantized).items() if isinstance(l, SparseMixin)} == {"d1", "d2"}


def test_skip_first_and_last():
    quantized = ks.quantize(_make("functional"), 4, skip_first=True, skip_last=True)
    layers = _by_name(quantized)
    assert type(layers["d1"]) is keras.layers.Dense
    assert type(layers["d3"]) is keras.layers.Dense
    assert layers["d2"].kernel_quantizer == quantizers.Uniform(4)
    assert layers["side"].kernel_quantizer == quantizers.Uniform(4)


def test_embedding_gets_no_input_quantizer():
    inp = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(20, 8, name="emb")(inp)
    out = keras.layers.Dense(3, name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    quantized = ks.quantize(model, "binary", activations="ste_sign")
    emb, head = quantized.get_layer("emb"), quantized.get_layer("head")
    assert emb.kernel_quantizer == quantizers.SteSign() and emb.input_quantizer is None
    assert head.input_quantizer == quantizers.SteSign()
    ids = np.array([[1, 2, 3, 4, 19]], "int32")
    assert set(np.unique(to_np(emb.embeddings))) == {-1.0, 1.0}
    assert np.isfinite(to_np(quantized(ids))).all()


def test_compiled_input_gives_a_compiled_model():
    model = _make("sequential")
    model.compile("adam", "mse")
    quantized = ks.quantize(model, 8)
    assert quantized.compiled
    quantized.fit(_x(), np.zeros((32, 4), "float32"), verbose=0)


def test_lsq_step_is_initialized_from_the_copied_weights():
    model = _make("sequential")
    quantized = ks.quantize(model, quantizers.LSQ(bits=4))
    for name in DENSE:
        kernel = to_np(model.get_layer(name).kernel)
        step = to_np(quantized.get_layer(name).quantizer_state("kernel")["step"])
        assert float(step) == pytest.approx(2 * np.abs(kernel).mean() / np.sqrt(7), rel=1e-5)
    model = _make("subclassed")
    kernel = to_np(model.d2.kernel)
    ks.quantize(model, quantizers.LSQ(bits=4))
    step = to_np(model.d2.quantizer_state("kernel")["step"])
    assert float(step) == pytest.approx(2 * np.abs(kernel).mean() / np.sqrt(7), rel=1e-5)


def test_unbuilt_subclassed_model_builds_quantizer_state():
    model = _make("subclassed_unbuilt")
    ks.quantize(model, quantizers.LSQ(bits=4), activations=quantizers.PACT(bits=4))
    model(_x())
    for layer in (model.d1, model.d2, model.d3):
        assert {v.name for v in layer.quantizer_variables()} == {
            "kernel_quantizer_step", "input_quantizer_clip"}
    history = _compile_fit(model)
    assert np.isfinite(history.history["loss"][-1])


# ------------------------------------------------------------- composition
@pytest.mark.parametrize("kind", ["sequential", "nested", "subclassed"])
def test_prune_then_quantize_keeps_masks_and_schedule(kind):
    model = _make(kind)
    pruned = ks.prune(model, 0.5)
    for name in DENSE:
        _by_name(pruned)[name].prune_to(0.5)
    masks = {n: to_np(_by_name(pruned)[n].get_mask("kernel")).copy() for n in DENSE}
    both = ks.quantize(pruned, "magnitude_aware_sign")
    for name in DENSE:
        layer = _by_name(both)[name]
        assert layer.schedule.target_sparsity == 0.5
        assert layer.kernel_quantizer == quantizers.MagnitudeAwareSign()
        np.testing.assert_array_equal(to_np(layer.get_mask("kernel")), masks[name])
        kernel = to_np(layer.kernel)
        assert not kernel[~masks[name]].any()
        assert (np.abs(kernel[masks[name]]) > 0).all()
    both.compile("adam", "mse")
    history = both.fit(_x(), np.zeros((32, 4), "float32"), verbose=0,
                       callbacks=[ks.callbacks.Pruning()])
    assert np.isfinite(history.history["loss"][-1])
    for name in DENSE:
        layer = _by_name(both)[name]
        kernel = to_np(layer.kernel)
        assert not kernel[~to_np(layer.get_mask("kernel"))].any()


@pytest.mark.parametrize("kind", ["sequential", "subclassed"])
def test_quantize_then_prune_keeps_quantizers(kind):
    model = _make(kind)
    quantized = ks.quantize(model, quantizers.LSQ(bits=4), activations="ste_sign")
    steps = {n: float(to_np(_by_name(quantized)[n].quantizer_state("kernel")["step"]))
             for n in DENSE}
    both = ks.prune(quantized, 0.75)
    for name in DENSE:
        layer = _by_name(both)[name]
        assert layer.kernel_quantizer == quantizers.LSQ(bits=4)
        assert layer.input_quantizer == quantizers.SteSign()
        assert layer.schedule.target_sparsity == 0.75
        # Same quantizer: its learned state is copied, not re-initialized.
        assert float(to_np(layer.quantizer_state("kernel")["step"])) == steps[name]
        layer.prune_to(0.75)
        kernel = to_np(layer.kernel)
        assert not kernel[~to_np(layer.get_mask("kernel"))].any()


def test_requantizing_replaces_the_quantizer():
    model = ks.quantize(_make("sequential"), quantizers.LSQ(bits=4))
    again = ks.quantize(model, 8)
    layer = again.get_layer("d2")
    assert layer.kernel_quantizer == quantizers.Uniform(8)
    assert layer.quantizer_variables() == []
    sub = _make("subclassed")
    ks.quantize(sub, quantizers.LSQ(bits=4))
    ks.quantize(sub, "binary")
    assert sub.d2.quantizer_variables() == [] and sub.d2.kernel_quantizer == quantizers.SteSign()


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("kind", ["functional", "subclassed"])
@pytest.mark.parametrize("kwargs, message", [
    (dict(weights="sign"), "weights='sign'"),
    (dict(weights=9), "weights=9"),
    (dict(weights=0), "weights=0"),
    (dict(weights=4, activations="relu"), "activations='relu'"),
    (dict(weights=None), "weights=None"),
    (dict(weights=4, layers=["d1", "bn"]), "['bn']"),
    (dict(weights=4, layers="bn"), "layers='bn'"),
    (dict(weights=4, layers=["nope"]), "layers=['nope']"),
    (dict(weights=4, skip_first=1), "skip_first=1"),
    (dict(weights=quantizers.Uniform), "weights="),
])
def test_bad_input_raises_and_leaves_the_model_untouched(kind, kwargs, message):
    model = _make(kind)
    snapshot = _snapshot(model)
    with pytest.raises(ValueError) as info:
        ks.quantize(model, **kwargs)
    assert message in str(info.value)
    _assert_untouched(model, snapshot)


def test_unsupported_layers_warn_or_raise_in_strict_mode():
    inp = keras.Input((4, 6))
    h = keras.layers.LSTM(5, name="lstm")(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(h))
    with pytest.warns(UserWarning, match="lstm"):
        quantized = ks.quantize(model, "binary")
    assert isinstance(quantized.get_layer("head"), SparseMixin)
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match="strict=True"):
        ks.quantize(model, "binary", strict=True)
    _assert_untouched(model, snapshot)


# ------------------------------------------------------------------ strip
@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_strip_gives_plain_layers_with_quantized_values(kind):
    model = _make(kind)
    quantized = ks.quantize(model, "ternary")
    x = _x()
    expected = to_np(quantized(x))
    kernels = {n: to_np(_by_name(quantized)[n].kernel).copy() for n in DENSE}
    plain = ks.strip(quantized)
    for name in DENSE:
        layer = _by_name(plain)[name]
        assert type(layer) is keras.layers.Dense
        np.testing.assert_array_equal(to_np(layer.kernel), kernels[name])
        assert len(np.unique(to_np(layer.kernel))) <= 3
    np.testing.assert_allclose(to_np(plain(x)), expected, rtol=1e-6, atol=1e-6)


def test_strip_warns_when_dropping_input_quantizers():
    quantized = ks.quantize(_make("sequential"), "binary", activations="ste_sign")
    with pytest.warns(UserWarning, match="input quantizers"):
        ks.strip(quantized)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ks.strip(ks.quantize(_make("sequential"), "binary"))


def test_8_bit_strip_then_keras_int8_saves_and_loads(tmp_path):
    quantized = ks.quantize(_make("sequential"), 8)
    _compile_fit(quantized)
    effective = {n: to_np(quantized.get_layer(n).kernel) for n in DENSE}
    plain = ks.strip(quantized)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InputLayer/BatchNormalization have no int8 mode
        plain.quantize("int8")
    for name in DENSE:
        layer = plain.get_layer(name)
        assert layer.quantization_mode == "int8"
        assert keras.backend.standardize_dtype(layer._kernel.dtype) == "int8"
        # Our 8-bit grid is Keras' per-channel int8 grid: re-quantizing is exact.
        dequantized = to_np(layer._kernel) / to_np(layer.kernel_scale)
        np.testing.assert_allclose(dequantized, effective[name], rtol=1e-6, atol=1e-7)
    path = os.path.join(tmp_path, "int8.keras")
    plain.save(path)
    loaded = keras.saving.load_model(path)
    x = _x()
    np.testing.assert_array_equal(to_np(loaded.predict(x, verbose=0)),
                                  to_np(plain.predict(x, verbose=0)))
    assert keras.backend.standardize_dtype(loaded.get_layer("d1")._kernel.dtype) == "int8"


# ------------------------------------------------------------------ report
def test_report_bits_packed_bytes_and_binary_mac_share():
    inp = keras.Input((64,))
    h = keras.layers.Dense(256, use_bias=False, name="first")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dense(256, use_bias=False, name="hidden")(h)
    out = keras.layers.Dense(10, name="head")(h)
    model = keras.Model(inp, out)
    quantized = ks.quantize(model, "binary", activations="ste_sign", skip_first=True)
    quantized.get_layer("head").configure_quantization("magnitude_aware_sign", None)
    rows = {row["layer"]: row for row in ks.report(quantized, print_fn=None).rows}
    assert rows["first"]["bits"] == 32 and rows["first"]["packed_bytes"] == 64 * 256 * 4
    assert rows["hidden"]["bits"] == 1
    assert rows["hidden"]["packed_bytes"] == 256 * 256 // 8
    assert rows["hidden"]["binary_mac_share"] == 1.0
    # 1 bit per weight, 10 float32 scales, 10 float32 biases; input not binary.
    assert rows["head"]["packed_bytes"] == 2560 // 8 + 4 * 10 + 4 * 10
    assert rows["head"]["binary_mac_share"] == 0.0
    assert rows["bn"]["packed_bytes"] == rows["bn"]["dense_bytes"]
    report = ks.report(quantized, print_fn=None)
    macs = {"first": 64 * 256, "hidden": 256 * 256, "head": 256 * 10}
    assert report.totals["binary_mac_share"] == pytest.approx(macs["hidden"] / sum(macs.values()))
    binarized = rows["hidden"]["dense_bytes"] / rows["hidden"]["packed_bytes"]
    assert binarized == 32
    text = str(report)
    assert "packed B" in text and "1-bit MACs" in text and "bits" in text


def test_report_packs_pruned_low_bit_layers_with_an_index():
    model = ks.prune(ks.quantize(_make("sequential"), 4), 0.75)
    layer = model.get_layer("d1")
    layer.prune_to(0.75)
    row = next(r for r in ks.report(model, print_fn=None).rows if r["layer"] == "d1")
    size, kept = 8 * 16, int(to_np(layer.get_mask("kernel")).sum())
    nonzero = int(np.count_nonzero(to_np(layer.kernel)))
    assert kept == 32 and nonzero <= kept
    dense_packed = size * 4 // 8
    sparse_packed = -(-nonzero * 4 // 8) + min(-(-size // 8), nonzero)
    assert row["bits"] == 4
    assert row["packed_bytes"] == min(dense_packed, sparse_packed) + 4 * 16 + 16 * 4


# ---------------------------------------------------------------- training
@pytest.mark.slow
def test_binary_mlp_learns_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(128, use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(128, use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(10),
        keras.layers.BatchNormalization(),
    ])
    model = ks.quantize(model, "binary", activations="ste_sign", skip_first=True)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], batch_size=32, epochs=8, verbose=0)
    accuracy = model.evaluate(x[1400:], y[1400:], verbose=0)[1]
    assert accuracy > 0.85
    hidden = [layer for layer in model.layers if isinstance(layer, SparseMixin)]
    for layer in hidden:
        assert set(np.unique(to_np(layer.kernel))) == {-1.0, 1.0}
        assert len(np.unique(to_np(layer.latent_weight("kernel")))) > 100


DISTRIBUTED = """
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import keras_sparse as ks

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.RandomState(0)
x = rng.randn(128, 16).astype("float32")
y = rng.randint(0, 4, size=128)
with strategy.scope():
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32),
                              keras.layers.BatchNormalization(), keras.layers.Dense(4)])
    model = ks.quantize(model, ks.quantizers.LSQ(4), activations="ste_sign", skip_first=True)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
start = float(model.layers[-1].quantizer_state("kernel")["step"].numpy())
history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
assert np.isfinite(history.history["loss"][-1])
copies = strategy.experimental_local_results(model.layers[-1].quantizer_state("kernel")["step"].value)
values = [float(c.numpy()) for c in copies]
assert len(values) == 2 and values[0] == values[1] and values[0] != start, values
print("ok")
"""


@pytest.mark.tf_only
@pytest.mark.slow
def test_quantized_training_under_mirrored_strategy():
    import subprocess
    import sys

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.distribute")
    result = subprocess.run([sys.executable, "-c", DISTRIBUTED], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
