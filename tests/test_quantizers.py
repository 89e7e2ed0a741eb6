"""Floor-2 quantizer objects: one parametrized suite over every registered
quantizer (config round trip, string alias, half-precision input, use inside
a layer under ``jit_compile=True``, idempotence), plus ``get`` and bad
arguments."""

import json

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops

import keras_sparse as ks
from conftest import to_np
from keras_sparse import quantizers

ALIASES = sorted(quantizers.REGISTRY)
EXPECTED_ALIASES = {
    "approx_sign", "dorefa", "identity", "lsq", "magnitude_aware_sign", "pact",
    "ste_heaviside", "ste_sign", "ste_tern", "stochastic_binary", "swish_sign", "uniform",
}
# Non-default instances, so config round trips are not vacuous.
CUSTOM = {
    "approx_sign": quantizers.ApproxSign(),
    "dorefa": quantizers.DoReFa(bits=3, mode="activations"),
    "identity": quantizers.Identity(precision=8),
    "lsq": quantizers.LSQ(bits=3, signed=False, initial_step=0.5),
    "magnitude_aware_sign": quantizers.MagnitudeAwareSign(clip_value=2.0),
    "pact": quantizers.PACT(bits=3, initial_clip=4.0),
    "ste_heaviside": quantizers.SteHeaviside(clip_value=None),
    "ste_sign": quantizers.SteSign(clip_value=0.5),
    "ste_tern": quantizers.SteTern(0.1, ternary_weight_networks=True, scaled=True),
    "stochastic_binary": quantizers.StochasticBinary(seed=4),
    "swish_sign": quantizers.SwishSign(beta=2.0),
    "uniform": quantizers.Uniform(bits=5, per_channel=False, symmetric=False, clip_value=3.0),
}
PRECISION = {
    "approx_sign": 1, "dorefa": 2, "identity": 32, "lsq": 4, "magnitude_aware_sign": 1,
    "pact": 4, "ste_heaviside": 1, "ste_sign": 1, "ste_tern": 2, "stochastic_binary": 1,
    "swish_sign": 1, "uniform": 8,
}


def test_every_alias_is_registered():
    assert set(ALIASES) == EXPECTED_ALIASES
    assert set(CUSTOM) == EXPECTED_ALIASES


@pytest.mark.parametrize("alias", ALIASES)
def test_alias_resolves_to_its_class_with_declared_precision(alias):
    quantizer = quantizers.get(alias)
    assert type(quantizer) is quantizers.REGISTRY[alias]
    assert isinstance(quantizer, quantizers.Quantizer)
    assert quantizer.precision == PRECISION[alias]
    assert quantizers.get(alias.upper()) == quantizer
    assert quantizers.get(quantizer) is quantizer


@pytest.mark.parametrize("alias", ALIASES)
def test_config_round_trip(alias):
    quantizer = CUSTOM[alias]
    config = quantizer.get_config()
    revived = type(quantizer).from_config(config)
    assert revived == quantizer and revived.get_config() == config
    assert revived.precision == quantizer.precision
    assert revived != quantizers.get(alias) or config == quantizers.get(alias).get_config()
    text = json.dumps(quantizers.serialize(quantizer))
    restored = quantizers.get(json.loads(text))
    assert type(restored) is type(quantizer) and restored == quantizer
    assert keras.saving.deserialize_keras_object(json.loads(text)) == quantizer
    assert hash(restored) == hash(quantizer)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("alias", ALIASES)
def test_half_precision_input(alias, dtype, rng):
    x = rng.standard_normal((4, 6)).astype("float32")
    quantizer = CUSTOM[alias]
    out = quantizer(ops.cast(x, dtype), training=False)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    assert tuple(out.shape) == x.shape
    values = to_np(out)
    assert np.all(np.isfinite(values))
    full = to_np(quantizer(ops.cast(ops.cast(x, dtype), "float32"), training=False))
    np.testing.assert_array_equal(values, to_np(ops.cast(full, dtype)))


@pytest.mark.parametrize("alias", ALIASES)
def test_jit_compiled_training_inside_a_layer(alias, rng):
    quantizer = CUSTOM[alias]
    x = rng.standard_normal((16, 6)).astype("float32")
    y = rng.standard_normal((16, 3)).astype("float32")
    layer = ks.layers.SparseDense(3, kernel_quantizer=quantizer, input_quantizer=quantizer)
    model = keras.Sequential([keras.Input((6,)), layer])
    model.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=True)
    before = [to_np(v) for v in layer.trainable_weights]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    after = [to_np(v) for v in layer.trainable_weights]
    assert any(not np.array_equal(b, a) for b, a in zip(before, after))
    predicted = model.predict(x, verbose=0)
    # Inference uses the quantized kernel and inputs exactly.
    kernel = to_np(layer.effective_weight("kernel"))
    inputs = to_np(quantizer(x, layer.quantizer_state("input") or None, output_axes=()))
    np.testing.assert_allclose(predicted, inputs @ kernel + to_np(layer.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alias", ALIASES)
def test_standalone_call_matches_layer_free_math(alias, rng):
    # Stateless use: learnable quantities take their initial values.
    x = rng.standard_normal((5, 4)).astype("float32")
    out = to_np(quantizers.get(alias)(x))
    assert out.shape == x.shape and np.all(np.isfinite(out))
    if PRECISION[alias] == 1 and alias != "ste_heaviside":
        assert set(np.unique(np.sign(out))) <= {-1.0, 1.0}
    if alias in ("ste_sign", "approx_sign", "swish_sign", "stochastic_binary"):
        np.testing.assert_array_equal(out, np.where(x >= 0, 1.0, -1.0))


def test_stochastic_binary_is_random_only_in_training():
    quantizer = quantizers.StochasticBinary(seed=0)
    x = np.full((2000,), 0.2, "float32")
    train = to_np(quantizer(x, training=True))
    assert 0.5 < (train == 1).mean() < 0.7  # P(+1) = 0.6
    np.testing.assert_array_equal(to_np(quantizer(x, training=False)), np.ones_like(x))


# ------------------------------------------------------------ idempotence
# Every registered quantizer with its defaults, plus variants that take
# other code paths (asymmetric and per-tensor ranges, fixed ranges, scaled
# ternaries, unsigned levels). DoReFa weights with 4 or more bits are left
# out: their tanh moves the levels of a quantized tensor, by design.
IDEMPOTENT = [quantizers.REGISTRY[alias]() for alias in ALIASES] + [
    quantizers.Uniform(bits=8, symmetric=False),
    quantizers.Uniform(bits=2, symmetric=False, per_channel=False),
    quantizers.Uniform(bits=1, symmetric=False),
    quantizers.Uniform(bits=4, per_channel=False),
    quantizers.Uniform(bits=5, symmetric=False, clip_value=3.0),
    quantizers.DoReFa(bits=3),
    quantizers.DoReFa(bits=3, mode="activations"),
    quantizers.LSQ(bits=3, signed=False),
    quantizers.SteTern(ternary_weight_networks=True, scaled=True),
    quantizers.SteTern(threshold_value=0.1, scaled=True),
]
# Exact zeros and magnitudes in [2^-20, 1e4]: scales stay normal floats
# (TensorFlow and XLA on CPU flush subnormal ones to zero).
_MAGNITUDE = 1e4
_ELEMENTS = st.one_of(
    st.just(0.0),
    st.floats(2.0**-20, _MAGNITUDE, width=32),
    st.floats(-_MAGNITUDE, -(2.0**-20), width=32),
)


def test_idempotence_covers_every_registered_quantizer():
    assert {type(q) for q in IDEMPOTENT} == set(quantizers.REGISTRY.values())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A few shapes (per-tensor, per-channel on the last axis, a single entry):
# the values are what the test varies, and JAX compiles each op once per
# shape, so a handful keeps 500 examples fast on every backend.
@given(x=hnp.arrays("float32", st.sampled_from([(1,), (7,), (3, 4), (6, 1), (2, 3, 4)]),
                    elements=_ELEMENTS))
@example(x=np.zeros((3, 2), "float32"))
# The range ends half a step off the grid: the top code is empty when the
# zero point is rounded (half to even) and the scale comes from the range.
@example(x=np.array([-0.5, 0.0, 2.5], "float32"))
@example(x=np.array([[-0.5, 254.5], [1.0, 3.0]], "float32"))
def test_every_quantizer_is_idempotent(x):
    # Exactly: statistics of q(x) (range, mean magnitude) must give back the
    # grid of x bit for bit. State (an LSQ step, a PACT clip) is built once
    # from x, as a layer does, and held fixed; stochastic quantizers are
    # deterministic with training=False. (-0.0 and 0.0 compare equal.)
    for quantizer in IDEMPOTENT:
        state = quantizer.build(keras.layers.Layer(), x.shape, "q", value=x) or None
        once = to_np(quantizer(x, state=state, training=False))
        twice = to_np(quantizer(once, state=state, training=False))
        assert np.all(np.isfinite(once)), quantizer
        np.testing.assert_array_equal(twice, once, err_msg=repr(quantizer))


# ------------------------------------------------------------------ get
def test_get_shortcuts():
    assert quantizers.get(None) is None
    assert quantizers.get("binary") == quantizers.SteSign()
    assert quantizers.get("ternary") == quantizers.SteTern(
        ternary_weight_networks=True, scaled=True)
    assert quantizers.get(1) == quantizers.SteSign()
    for bits in range(2, 9):
        assert quantizers.get(bits) == quantizers.Uniform(bits=bits)
        assert quantizers.get(bits).precision == bits


def test_side_values_count_scales():
    shape = (3, 3, 8, 16)
    assert quantizers.SteSign().side_values(shape, (-1,)) == 0
    assert quantizers.MagnitudeAwareSign().side_values(shape, (-1,)) == 16
    assert quantizers.MagnitudeAwareSign().side_values((3, 3, 8, 2), (-2, -1)) == 16
    assert quantizers.Uniform(8).side_values(shape, (-1,)) == 16
    assert quantizers.Uniform(8, symmetric=False).side_values(shape, (-1,)) == 32
    assert quantizers.Uniform(8, per_channel=False).side_values(shape, (-1,)) == 1
    assert quantizers.LSQ().side_values(shape) == 1
    assert quantizers.SteTern(scaled=True).side_values(shape) == 1


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: quantizers.get("sign"), "quantizer='sign'"),
        (lambda: quantizers.get("nope", "kernel_quantizer"), "kernel_quantizer='nope'"),
        (lambda: quantizers.get(9), "quantizer=9"),
        (lambda: quantizers.get(0, "weights"), "weights=0"),
        (lambda: quantizers.get(True), "quantizer=True"),
        (lambda: quantizers.get(2.5), "quantizer=2.5"),
        (lambda: quantizers.get({"class_name": "Dense", "config": {"units": 2}}), "quantizer="),
        (lambda: quantizers.Uniform(bits=9), "bits=9"),
        (lambda: quantizers.Uniform(bits=0), "bits=0"),
        (lambda: quantizers.Uniform(bits=1), "bits=1"),
        (lambda: quantizers.Uniform(bits="4"), "bits='4'"),
        (lambda: quantizers.Uniform(per_channel=1), "per_channel=1"),
        (lambda: quantizers.Uniform(clip_value=0), "clip_value=0"),
        (lambda: quantizers.DoReFa(bits=9), "bits=9"),
        (lambda: quantizers.DoReFa(mode="w"), "mode='w'"),
        (lambda: quantizers.LSQ(bits=1), "bits=1"),
        (lambda: quantizers.LSQ(signed="yes"), "signed='yes'"),
        (lambda: quantizers.LSQ(initial_step=-1.0), "initial_step=-1.0"),
        (lambda: quantizers.PACT(bits=0), "bits=0"),
        (lambda: quantizers.PACT(initial_clip=0.0), "initial_clip=0.0"),
        (lambda: quantizers.SteSign(clip_value="1"), "clip_value='1'"),
        (lambda: quantizers.SwishSign(beta=-1), "beta=-1"),
        (lambda: quantizers.SteTern(scaled=1), "scaled=1"),
        (lambda: quantizers.StochasticBinary(seed=1.5), "seed=1.5"),
        (lambda: quantizers.Identity(precision=0), "precision=0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)
