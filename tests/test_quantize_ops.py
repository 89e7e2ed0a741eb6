"""Floor-1 quantization math against numpy references: forward values on the
exact grid, straight-through gradients on inputs that include exact 0 and
±clip, the LSQ step gradient against finite differences, dtypes."""

import math

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops

from conftest import backend_grad
from conftest import to_np
from keras_sparse.ops import packing
from keras_sparse.ops import quantize as q

# Exact zeros, exact ±clip (1.0) and values either side.
EDGES = np.array([-2.0, -1.0, -0.999, -0.5, 0.0, 0.25, 0.5, 0.999, 1.0, 1.0001, 3.0], "float32")


def grads(fn, *args):
    """Gradients of ``sum(fn(*args) * cotangent)`` with respect to every arg
    (cotangent fixed, non-uniform so each entry is weighed differently)."""
    args = [np.asarray(a, "float32") for a in args]
    out_shape = np.shape(to_np(fn(*args)))
    cot = np.linspace(0.5, 1.5, int(np.prod(out_shape)) or 1).reshape(out_shape).astype("float32")
    cot_tensor = keras.ops.convert_to_tensor(cot)
    return backend_grad(lambda *a: keras.ops.sum(fn(*a) * cot_tensor), args), cot


def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype("float32")


# ------------------------------------------------------------------ binary
@pytest.mark.parametrize("clip", [1.0, 0.5, None])
def test_ste_sign_values_and_gradient(clip):
    out = to_np(q.ste_sign(EDGES, clip))
    np.testing.assert_array_equal(out, np_sign(EDGES))
    assert to_np(q.ste_sign([0.0]))[0] == 1.0  # sign(0) = +1
    (g,), cot = grads(lambda x: q.ste_sign(x, clip), EDGES)
    gate = np.ones_like(EDGES) if clip is None else (np.abs(EDGES) <= clip)
    np.testing.assert_array_equal(g, cot * gate)


def test_approx_sign_gradient_is_bi_real_polynomial():
    np.testing.assert_array_equal(to_np(q.approx_sign(EDGES)), np_sign(EDGES))
    (g,), cot = grads(q.approx_sign, EDGES)
    expected = np.where(np.abs(EDGES) <= 1, 2 - 2 * np.abs(EDGES), 0) * cot
    np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-6)
    assert g[EDGES == 0][0] == pytest.approx(2 * cot[EDGES == 0][0])


@pytest.mark.parametrize("beta", [5.0, 1.5])
def test_swish_sign_gradient_is_signswish_derivative(beta):
    np.testing.assert_array_equal(to_np(q.swish_sign(EDGES, beta)), np_sign(EDGES))
    (g,), cot = grads(lambda x: q.swish_sign(x, beta), EDGES)
    x = EDGES.astype("float64")
    expected = beta * (2 - beta * x * np.tanh(beta * x / 2)) / (1 + np.cosh(beta * x))
    np.testing.assert_allclose(g, expected * cot, rtol=1e-5, atol=1e-7)


def test_magnitude_aware_sign_per_output_unit(rng):
    w = rng.standard_normal((5, 3)).astype("float32")
    w[0, 0] = 0.0  # a pruned weight: left out of alpha
    w[1, 1] = 1.0
    alpha = np.abs(w).sum(axis=0, keepdims=True) / (w != 0).sum(axis=0, keepdims=True)
    out = to_np(q.magnitude_aware_sign(w))
    np.testing.assert_allclose(out, alpha * np_sign(w), rtol=1e-6)
    assert alpha[0, 0] == pytest.approx(np.abs(w[1:, 0]).mean())
    (g,), cot = grads(q.magnitude_aware_sign, w)
    np.testing.assert_allclose(g, alpha * (np.abs(w) <= 1) * cot, rtol=1e-6)
    # Other layouts: one alpha per (channel, multiplier) of a depthwise kernel.
    k = rng.standard_normal((3, 3, 4, 2)).astype("float32")
    alpha = np.abs(k).mean(axis=(0, 1), keepdims=True)
    out = to_np(q.magnitude_aware_sign(k, output_axes=(-2, -1)))
    np.testing.assert_allclose(out, alpha * np_sign(k), rtol=1e-6)
    # A vector has one alpha.
    v = np.array([0.5, -1.5], "float32")
    np.testing.assert_array_equal(to_np(q.magnitude_aware_sign(v)), [1.0, -1.0])


def test_stochastic_binary_probability_and_gradient():
    seed = keras.random.SeedGenerator(3)
    x = np.full((20000,), 0.5, "float32")
    out = to_np(q.stochastic_binary(x, seed))
    assert set(np.unique(out)) == {-1.0, 1.0}
    assert abs((out == 1).mean() - 0.75) < 0.02  # P(+1) = (x + 1) / 2
    saturated = to_np(q.stochastic_binary(np.array([-1.0, -5.0, 1.0, 5.0], "float32"), seed))
    np.testing.assert_array_equal(saturated, [-1, -1, 1, 1])
    (g,), cot = grads(lambda v: q.stochastic_binary(v, 7), EDGES)
    np.testing.assert_array_equal(g, cot * (np.abs(EDGES) <= 1))


@pytest.mark.parametrize("clip", [1.0, 2.0])
def test_ste_heaviside(clip):
    np.testing.assert_array_equal(to_np(q.ste_heaviside(EDGES, clip)), (EDGES > 0).astype("float32"))
    (g,), cot = grads(lambda x: q.ste_heaviside(x, clip), EDGES)
    np.testing.assert_array_equal(g, cot * (np.abs(EDGES) <= clip))


# ----------------------------------------------------------------- ternary
def test_ste_tern_fixed_threshold():
    x = np.array([-0.5, -0.05, 0.0, 0.04, 0.05, 0.051, 1.0, 2.0], "float32")
    out = to_np(q.ste_tern(x, threshold_value=0.05))
    np.testing.assert_array_equal(out, [-1, 0, 0, 0, 0, 1, 1, 1])
    (g,), cot = grads(lambda v: q.ste_tern(v, 0.05), x)
    np.testing.assert_array_equal(g, cot * (np.abs(x) <= 1))


def test_ste_tern_twn_threshold_and_scale(rng):
    w = rng.standard_normal((6, 4)).astype("float32")
    delta = 0.7 * np.abs(w).mean()
    keep = np.abs(w) > delta
    alpha = np.abs(w)[keep].mean()
    out = to_np(q.ste_tern(w, ternary_weight_networks=True, scaled=True))
    np.testing.assert_allclose(out, alpha * np.sign(w) * keep, rtol=1e-6)
    assert len(np.unique(out)) == 3
    (g,), cot = grads(lambda v: q.ste_tern(v, ternary_weight_networks=True, scaled=True), w)
    np.testing.assert_allclose(g, alpha * cot * (np.abs(w) <= 1), rtol=1e-5)
    unscaled = to_np(q.ste_tern(w, ternary_weight_networks=True))
    np.testing.assert_array_equal(unscaled, np.sign(w) * keep)
    # Pruned (zero) entries leave the threshold and the scale unchanged.
    padded = np.concatenate([w, np.zeros((6, 4), "float32")])
    out = to_np(q.ste_tern(padded, ternary_weight_networks=True, scaled=True))
    np.testing.assert_allclose(out[:6], alpha * np.sign(w) * keep, rtol=1e-6)
    np.testing.assert_array_equal(out[6:], 0)


# ------------------------------------------------------------------- k-bit
def np_uniform_symmetric(x, bits, axis=None):
    n = 2 ** (bits - 1) - 1
    top = np.abs(x).max(axis=axis, keepdims=axis is not None)
    s = np.where(top > 0, top / np.float32(n), 1).astype("float32")
    return np.clip(np.round(x / s), -n, n) * s, s


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_uniform_symmetric_per_tensor_and_per_channel(rng, bits):
    w = rng.standard_normal((7, 5)).astype("float32")
    for axes, axis in (((), None), ((-1,), 0)):
        out = to_np(q.uniform(w, bits, output_axes=axes))
        expected, s = np_uniform_symmetric(w, bits, axis)
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
        levels = out / s
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
        assert np.abs(np.round(levels)).max() <= 2 ** (bits - 1) - 1
    (g,), cot = grads(lambda v: q.uniform(v, bits), w)
    np.testing.assert_array_equal(g, cot)  # the range covers the tensor


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_uniform_asymmetric_keeps_zero_exact(rng, bits):
    w = np.concatenate([rng.uniform(0.2, 3.0, 20), [0.0]]).astype("float32").reshape(-1, 1)
    out = to_np(q.uniform(w, bits, symmetric=False, output_axes=()))
    assert out[-1, 0] == 0.0
    s = w.max() / np.float32(2**bits - 1)  # range [min(w, 0), max(w)] = [0, max]
    assert len(np.unique(out)) <= 2**bits
    np.testing.assert_allclose(out / s, np.round(out / s), atol=1e-4)
    assert np.abs(out - w).max() <= s / 2 + 1e-6


def test_uniform_fixed_range_relu(rng):
    x = np.array([-1.0, 0.0, 0.3, 2.9, 3.0, 4.0], "float32")
    out = to_np(q.uniform(x, 2, symmetric=False, clip_value=3.0))
    np.testing.assert_allclose(out, [0, 0, 0, 3, 3, 3])
    (g,), cot = grads(lambda v: q.uniform(v, 2, symmetric=False, clip_value=3.0), x)
    np.testing.assert_array_equal(g, cot * ((x >= 0) & (x <= 3)))
    (g,), cot = grads(lambda v: q.uniform(v, 4, clip_value=1.0), EDGES)
    np.testing.assert_array_equal(g, cot * (np.abs(EDGES) <= 1))


@settings(max_examples=30)
@given(
    hnp.arrays("float32", st.integers(2, 40), elements=st.floats(-100, 100, width=32)),
    st.integers(2, 8),
)
def test_uniform_properties(x, bits):
    out = to_np(q.uniform(x, bits, output_axes=()))
    n = 2 ** (bits - 1) - 1
    top = np.abs(x).max()
    assert len(np.unique(out)) <= 2 * n + 1
    if top > 0:
        assert np.abs(out - x).max() <= top / n / 2 * (1 + 1e-5) + 1e-6
    # Idempotent: the range of the output gives back its scale exactly.
    np.testing.assert_array_equal(to_np(q.uniform(out, bits, output_axes=())), out)
    asymmetric = to_np(q.uniform(x, bits, symmetric=False, output_axes=()))
    np.testing.assert_array_equal(
        to_np(q.uniform(asymmetric, bits, symmetric=False, output_axes=())), asymmetric)
    np.testing.assert_array_equal(out[x == 0], 0)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_dorefa_activations(bits):
    out = to_np(q.dorefa(EDGES, bits, "activations"))
    steps = 2**bits - 1
    expected = np.round(np.clip(EDGES, 0, 1) * steps) / steps
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    (g,), cot = grads(lambda v: q.dorefa(v, bits, "activations"), EDGES)
    np.testing.assert_array_equal(g, cot * ((EDGES >= 0) & (EDGES <= 1)))


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_dorefa_weights_value_and_gradient(rng, bits):
    w = rng.standard_normal((4, 3)).astype("float32")
    t = np.tanh(w.astype("float64"))
    m = np.abs(t).max()
    steps = 2**bits - 1
    expected = 2 * np.round((t / (2 * m) + 0.5) * steps) / steps - 1
    np.testing.assert_allclose(to_np(q.dorefa(w, bits)), expected, rtol=1e-5, atol=1e-6)
    assert len(np.unique(to_np(q.dorefa(w, bits)))) <= 2**bits
    # Gradient of the straight-through surrogate tanh(w) / max|tanh(w)|,
    # the max included (as DoReFa's reference code).
    (g,), cot = grads(lambda v: q.dorefa(v, bits), w)
    k = np.unravel_index(np.argmax(np.abs(t)), t.shape)
    expected = cot * (1 - t**2) / m
    expected[k] -= (cot * t).sum() / m**2 * np.sign(t[k]) * (1 - t[k] ** 2)
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)


# -------------------------------------------------------------------- LSQ
def np_lsq(v, s, bits, signed=True):
    q_n, q_p = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return np.round(np.clip(v / s, -q_n, q_p)) * s, q_n, q_p


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_values_and_gradients_match_the_paper(bits, signed):
    s = np.float32(0.25)
    q_n, q_p = q.lsq_levels(bits, signed)
    # Exact boundaries (v/s = -Q_N, 0, Q_P), beyond them and inside.
    v = np.array([-(q_n + 3), -q_n, -1.3, -0.5, 0.0, 0.4, 1.6, q_p, q_p + 2], "float32") * s
    out = to_np(q.lsq(v, s, bits, signed))
    expected, _, _ = np_lsq(v, s, bits, signed)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    (g_v, g_s), cot = grads(lambda a, b: q.lsq(a, b, bits, signed), v, s)
    ratio = v / s
    inside = (ratio > -q_n) & (ratio < q_p)
    np.testing.assert_allclose(g_v, cot * inside, rtol=1e-6)
    g = 1 / math.sqrt(v.size * q_p)
    dstep = np.where(ratio <= -q_n, -q_n, np.where(ratio >= q_p, q_p, np.round(ratio) - ratio))
    np.testing.assert_allclose(g_s, g * (cot * dstep).sum(), rtol=1e-5, atol=1e-7)


def test_lsq_step_gradient_matches_finite_differences(rng):
    bits, s = 4, 0.3
    q_n, q_p = q.lsq_levels(bits)
    v = rng.uniform(-q_n * s * 1.4, q_p * s * 1.4, 64).astype("float32")
    ratio = v / s
    # Away from rounding ties and the clip kinks, where a difference quotient
    # of the straight-through surrogate is smooth.
    v = v[(np.abs(ratio - np.round(ratio)) < 0.4) & (np.abs(ratio + q_n) > 0.05)
          & (np.abs(ratio - q_p) > 0.05)]
    (_, g_s), cot = grads(lambda a, b: q.lsq(a, b, bits, grad_scale=1.0), v, np.float32(s))

    def surrogate(step):
        # round() frozen at its value at s (straight-through), clip exact.
        frozen = np.round(np.clip(v / s, -q_n, q_p))
        c = np.clip(v.astype("float64") / step, -q_n, q_p)
        return float(((frozen + c - np.clip(v / s, -q_n, q_p)) * step * cot).sum())

    eps = 1e-4
    fd = (surrogate(s + eps) - surrogate(s - eps)) / (2 * eps)
    assert g_s == pytest.approx(fd, rel=1e-3, abs=1e-4)


def test_lsq_initial_step_and_levels():
    assert q.lsq_levels(4) == (8.0, 7.0)
    assert q.lsq_levels(4, signed=False) == (0.0, 15.0)
    v = np.array([0.5, -0.5, 1.0, 0.0], "float32")
    assert float(to_np(q.lsq_initial_step(v, 4))) == pytest.approx(2 * 0.5 / math.sqrt(7))
    assert float(to_np(q.lsq_initial_step(np.zeros(3, "float32"), 4))) == 1.0


# ---------------------------------------------------------------- PACT
@pytest.mark.parametrize("bits", [2, 4])
def test_pact_values_and_gradients(bits):
    alpha = np.float32(1.0)
    x = np.array([-1.0, 0.0, 0.2, 0.45, 0.999, 1.0, 2.0], "float32")
    out = to_np(q.pact(x, alpha, bits))
    steps = 2**bits - 1
    np.testing.assert_allclose(out, np.round(np.clip(x, 0, alpha) * steps / alpha) * alpha / steps,
                               rtol=1e-6)
    (g_x, g_a), cot = grads(lambda a, b: q.pact(a, b, bits), x, alpha)
    np.testing.assert_array_equal(g_x, cot * ((x >= 0) & (x < alpha)))
    assert float(g_a) == pytest.approx(float((cot * (x >= alpha)).sum()))


# ----------------------------------------------------------------- common
ALL = {
    "ste_sign": lambda x: q.ste_sign(x),
    "approx_sign": q.approx_sign,
    "swish_sign": q.swish_sign,
    "magnitude_aware_sign": q.magnitude_aware_sign,
    "ste_heaviside": q.ste_heaviside,
    "ste_tern": lambda x: q.ste_tern(x, ternary_weight_networks=True, scaled=True),
    "uniform": lambda x: q.uniform(x, 4, output_axes=(-1,)),
    "uniform_asym": lambda x: q.uniform(x, 4, symmetric=False),
    "dorefa": lambda x: q.dorefa(x, 2),
    "lsq": lambda x: q.lsq(x, 0.2, 4),
    "pact": lambda x: q.pact(x, 1.5, 3),
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_half_precision_input_keeps_dtype(rng, name, dtype):
    x = ops.cast(rng.standard_normal((6, 4)).astype("float32"), dtype)
    out = ALL[name](x)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    # Computed in float32 and cast back.
    reference = ops.cast(ALL[name](ops.cast(x, "float32")), dtype)
    np.testing.assert_array_equal(to_np(out), to_np(reference))


@pytest.mark.parametrize("name", sorted(ALL))
def test_forward_is_exact_not_rounded_by_the_straight_through_identity(rng, name):
    # The STE identity must not perturb values: every binary output is ±1
    # exactly, and results are the same under a jit trace (TensorFlow's XLA,
    # jax.jit; torch runs eagerly).
    x = rng.standard_normal((5, 3)).astype("float32")
    eager = to_np(ALL[name](x))
    if name in ("ste_sign", "approx_sign", "swish_sign"):
        assert set(np.unique(eager)) <= {-1.0, 1.0}
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        traced = tf.function(ALL[name], jit_compile=True)(x).numpy()
    elif backend == "jax":
        import jax

        traced = np.asarray(jax.jit(ALL[name])(x))
    else:
        pytest.skip(f"no jit trace on backend {backend}")
    np.testing.assert_allclose(traced, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: q.uniform([1.0], bits=9), "bits=9"),
        (lambda: q.uniform([1.0], bits=0), "bits=0"),
        (lambda: q.uniform([1.0], bits=1), "bits=1"),
        (lambda: q.uniform([1.0], bits=2.0), "bits=2.0"),
        (lambda: q.dorefa([1.0], mode="bias"), "mode='bias'"),
        (lambda: q.lsq([1.0], 0.1, bits=1), "bits=1"),
        (lambda: q.ste_sign([1.0], clip_value=-1), "clip_value=-1"),
        (lambda: q.ste_sign(np.array([1], "int32")), "int32"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call()


# ------------------------------------------------------------ bit packing
@settings(max_examples=40)
@given(st.sampled_from([1, 2, 4, 8]), st.data())
def test_pack_bits_round_trip(width, data):
    codes = data.draw(hnp.arrays(np.uint8, st.integers(0, 50),
                                 elements=st.integers(0, 2**width - 1)))
    packed = packing.pack_bits(codes, width)
    assert packed.dtype == np.uint8 and packed.size == -(-codes.size * width // 8)
    np.testing.assert_array_equal(packing.unpack_bits(packed, width, codes.size), codes)


def test_pack_bits_layout_and_errors():
    np.testing.assert_array_equal(packing.pack_bits(np.array([1, 0, 1, 1]), 1), [13])
    np.testing.assert_array_equal(packing.pack_bits(np.array([3, 0, 1, 2]), 2), [0b10010011])
    with pytest.raises(ValueError, match="width=3"):
        packing.pack_bits([1], 3)
    with pytest.raises(ValueError, match="2\\*\\*width = 4"):
        packing.pack_bits([4], 2)
