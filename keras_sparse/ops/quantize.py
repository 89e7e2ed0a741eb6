"""Quantization math: binary, ternary and k-bit quantizers with their
straight-through gradients.

Every function is pure math on tensors written with ``keras.ops``; it works
on TensorFlow, JAX and torch, under XLA. Gradients are set in one of two
ways:

* :func:`gated_straight_through` (``keras.ops.custom_gradient``) for the
  quantizers of one tensor whose gradient is the upstream gradient times an
  elementwise factor: forward ``value(x)``, backward
  ``upstream * slope(x)`` where ``gate(x)``, else 0. ``ste_sign`` is
  ``sign(x)`` forward and ``upstream * 1{|x| <= clip}`` backward. These run
  on every training step of a quantized layer, so the graph is kept small:
  TensorFlow on CPU runs without XLA by default, and there each extra
  elementwise op over a kernel costs time (``benchmarks/quant_overhead.py``).
* The identity::

      straight_through(value, surrogate) = stop_gradient(value)
                                           + (surrogate - stop_gradient(surrogate))

  whose forward value is exactly ``value`` (``s - s`` is exactly 0 for
  finite ``s``) and whose gradient is the gradient of ``surrogate``, for the
  quantizers with learned parameters (``lsq`` step, ``pact`` clip) or
  randomness, whose gradients reach more than one input.

Conventions shared by all functions:

* ``sign(0) = +1``: a binary weight is never 0.
* The output has the input's dtype. ``float16``/``bfloat16`` inputs are
  computed in ``float32`` and cast back, so scales and rounding do not
  depend on the half-precision format.
* Scales computed from the tensor itself (``alpha = mean|x|``, the range of
  a dynamic ``uniform``) are constants for the gradient (stop-gradient);
  learned scales (``lsq`` step, ``pact`` clip) receive their gradient.
* Mean magnitudes (the XNOR ``alpha``, the TWN threshold) are taken over the
  non-zero entries, so pruned weights (exact zeros) do not shrink them; on
  a dense float tensor this is the plain mean.
* Rounding is ``keras.ops.round``: half to even, as ``numpy.round``.
* ``output_axes`` names the axes that index output units (``(-1,)`` for a
  Dense kernel); per-channel statistics reduce over every other axis, and
  ``()`` means per-tensor.
"""

import math

import keras
from keras import ops

from keras_sparse import backend

__all__ = [
    "straight_through",
    "gated_straight_through",
    "sign",
    "ste_sign",
    "approx_sign",
    "swish_sign",
    "magnitude_aware_sign",
    "stochastic_binary",
    "ste_tern",
    "uniform",
    "dorefa",
    "lsq",
    "lsq_levels",
    "lsq_initial_step",
    "ste_heaviside",
    "pact",
    "reduce_axes",
]


# ------------------------------------------------------------------ helpers
def _to_compute(x):
    """``x`` as a float tensor in its compute dtype, and the dtype to return."""
    x = backend.read(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if not keras.backend.is_float_dtype(dtype):
        raise ValueError(
            f"Quantizers take floating-point tensors. Received: x.dtype={dtype}"
        )
    if dtype in ("float16", "bfloat16"):
        return ops.cast(x, "float32"), dtype
    return x, dtype


def _like(value, x):
    """A tensor ``value`` (scalar, variable, tensor) in ``x``'s dtype."""
    return ops.cast(ops.convert_to_tensor(value), x.dtype)


def _gate(condition, x):
    """A gradient-free 0/1 tensor from a boolean ``condition``."""
    return ops.stop_gradient(ops.cast(condition, x.dtype))


def straight_through(value, surrogate):
    """Forward ``value``, backward the gradient of ``surrogate``.

    .. math::
        y = \\mathrm{sg}(v) + (s - \\mathrm{sg}(s))

    The forward result equals ``value`` bit for bit (``s - sg(s)`` is exactly
    zero for finite ``s``); the gradient is ``ds/dx``.

    Example:
    >>> x = keras.ops.convert_to_tensor([0.4, -1.7])
    >>> straight_through(keras.ops.round(x), x)  # round, gradient 1
    [0., -2.]
    """
    return ops.add(
        ops.stop_gradient(value), ops.subtract(surrogate, ops.stop_gradient(surrogate))
    )


def gated_straight_through(x, forward, gate=None):
    """Forward ``value``; gradient ``upstream * slope`` where ``gate(x)``
    holds and 0 elsewhere, with ``value, slope = forward(x)``.

    .. math::
        y = v(x), \\qquad \\frac{\\partial L}{\\partial x} =
        \\frac{\\partial L}{\\partial y} \\cdot s(x) \\cdot 1_{g(x)}

    Args:
        x: the float tensor (in its compute dtype).
        forward: function of ``x`` returning the forward result (same
            shape), or a pair ``(value, slope)`` whose ``slope`` is a tensor
            broadcastable to ``x``, a function of ``x`` evaluated only for
            the gradient, or ``None`` (1).
        gate: function of ``x`` giving a boolean tensor, or ``None`` (pass
            everywhere).

    Everything is computed from ``x`` inside the function, so the gradient
    reaches ``x`` only through the rule above (statistics such as a
    per-channel scale are constants for it). Built on
    ``keras.ops.custom_gradient``: a handful of ops per step instead of the
    ~10 of the stop-gradient identity.

    Example:
    >>> gated_straight_through(x, keras.ops.round)  # round, gradient 1
    >>> gated_straight_through(x, sign, gate=lambda t: abs(t) <= 1)  # ste_sign
    """

    @ops.custom_gradient
    def function(x):
        out = forward(x)
        value, slope = out if isinstance(out, tuple) else (out, None)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            result = upstream
            if slope is not None:
                result = result * (slope(x) if callable(slope) else slope)
            if gate is not None:
                result = ops.where(gate(x), result, ops.zeros((), result.dtype))
            return result

        return value, grad

    return function(x)


def reduce_axes(ndim, output_axes):
    """Axes to reduce for per-channel statistics: every axis of an
    ``ndim``-dimensional tensor not in ``output_axes`` (``()`` means
    per-tensor; ``None`` means the last axis for a tensor of 2 or more
    dimensions and per-tensor for a vector or scalar)."""
    if output_axes is None:
        output_axes = (-1,) if ndim >= 2 else ()
    keep = {a % ndim for a in output_axes} if ndim else set()
    return tuple(a for a in range(ndim) if a not in keep)


def _mean_abs(x, output_axes=()):
    """Mean of ``|x|`` over the non-zero entries (0 where all are zero)."""
    axes = reduce_axes(len(x.shape), output_axes)
    if not axes:
        return ops.abs(x)
    total = ops.sum(ops.abs(x), axis=axes, keepdims=True)
    count = ops.sum(ops.cast(ops.not_equal(x, 0), x.dtype), axis=axes, keepdims=True)
    return total / ops.maximum(count, 1.0)


def _max_abs(x, output_axes):
    axes = reduce_axes(len(x.shape), output_axes)
    if not axes:
        return ops.abs(x)
    return ops.max(ops.abs(x), axis=axes, keepdims=True)


def check_bits(bits, low=1, high=8, name="bits"):
    """Validate a bit width: an ``int`` in ``[low, high]``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(
            f"`{name}` must be an integer in [{low}, {high}]. Received: {name}={bits!r}"
        )
    return bits


def _within(clip_value):
    """Gate ``|x| <= clip_value`` (``None``: no gate)."""
    if clip_value is None:
        return None
    return lambda x: ops.less_equal(ops.abs(x), clip_value)


def _check_clip(clip_value, allow_none=True):
    if clip_value is None and allow_none:
        return None
    if isinstance(clip_value, bool) or not isinstance(clip_value, (int, float)) or not (
        clip_value > 0 and math.isfinite(clip_value)
    ):
        raise ValueError(
            f"`clip_value` must be a positive number. Received: clip_value={clip_value!r}"
        )
    return float(clip_value)


# ------------------------------------------------------------------- binary
def sign(x):
    """Sign with ``sign(0) = +1`` (forward only; no useful gradient).

    .. math::
        \\mathrm{sign}(x) = \\begin{cases} +1 & x \\ge 0 \\\\ -1 & x < 0 \\end{cases}

    Example:
    >>> sign([-0.5, 0.0, 2.0])
    [-1., 1., 1.]
    """
    x = ops.convert_to_tensor(x)
    one = ops.ones((), x.dtype)
    return ops.where(ops.greater_equal(x, 0), one, ops.negative(one))


def ste_sign(x, clip_value=1.0):
    """Binarize with the straight-through estimator (BinaryNet).

    .. math::
        q(x) = \\mathrm{sign}(x), \\qquad
        \\frac{\\partial q}{\\partial x} = 1_{|x| \\le c}

    ``clip_value=None`` passes the gradient everywhere.

    Reference: M. Courbariaux et al., "Binarized Neural Networks", 2016;
    Y. Bengio et al., "Estimating or propagating gradients through
    stochastic neurons", 2013.

    Example:
    >>> ste_sign([-1.5, 0.0, 0.3])
    [-1., 1., 1.]     # gradient [0., 1., 1.]
    """
    clip_value = _check_clip(clip_value)
    x, dtype = _to_compute(x)
    return ops.cast(gated_straight_through(x, sign, _within(clip_value)), dtype)


def approx_sign(x):
    """Binarize with the piecewise-polynomial gradient of Bi-Real Net.

    .. math::
        q(x) = \\mathrm{sign}(x), \\qquad
        \\frac{\\partial q}{\\partial x} = (2 - 2|x|)\\,1_{|x| \\le 1}

    (the derivative of ``2x - x|x|`` on ``[-1, 1]``).

    Reference: Z. Liu et al., "Bi-Real Net", ECCV 2018.

    Example:
    >>> approx_sign([-0.5, 0.0, 2.0])
    [-1., 1., 1.]     # gradient [1., 2., 0.]
    """
    x, dtype = _to_compute(x)
    return ops.cast(
        gated_straight_through(
            x, lambda t: (sign(t), lambda u: 2.0 - 2.0 * ops.abs(u)), _within(1.0)
        ),
        dtype,
    )


def swish_sign(x, beta=5.0):
    """Binarize with the SignSwish gradient of BNN+.

    .. math::
        q(x) = \\mathrm{sign}(x), \\qquad
        \\frac{\\partial q}{\\partial x} =
        \\frac{\\beta\\,(2 - \\beta x \\tanh(\\beta x / 2))}{1 + \\cosh(\\beta x)}

    the derivative of :math:`SS_\\beta(x) = 2\\sigma(\\beta x)(1 + \\beta x
    (1 - \\sigma(\\beta x))) - 1`.

    Reference: S. Darabi et al., "BNN+: Improved Binary Network Training",
    2018.

    Example:
    >>> swish_sign([-0.5, 0.0, 2.0])
    [-1., 1., 1.]     # gradient at 0: beta
    """
    x, dtype = _to_compute(x)
    beta = float(beta)

    def slope(t):
        # The derivative in closed form: differentiating SS_beta itself
        # cancels catastrophically in float32 once |beta x| is large.
        bx = beta * t
        return beta * (2.0 - bx * ops.tanh(bx / 2.0)) / (1.0 + ops.cosh(bx))

    return ops.cast(gated_straight_through(x, lambda t: (sign(t), slope)), dtype)


def magnitude_aware_sign(x, output_axes=None, clip_value=1.0):
    """Binarize and scale by the mean magnitude per output unit (XNOR-Net
    / BWN weights).

    .. math::
        q(W) = \\alpha \\, \\mathrm{sign}(W), \\qquad
        \\alpha_j = \\mathrm{mean}_{i: W_{ij} \\ne 0} |W_{ij}|, \\qquad
        \\frac{\\partial q}{\\partial W} = \\alpha \\, 1_{|W| \\le c}

    with ``alpha`` a constant for the gradient (as in Larq) and one ``alpha``
    per index of ``output_axes``. Zeros (pruned weights) are left out of the
    mean.

    Reference: M. Rastegari et al., "XNOR-Net", ECCV 2016.

    Example:
    >>> magnitude_aware_sign([[0.5, -2.0], [-1.5, 1.0]])
    [[1.0, -1.5], [-1.0, 1.5]]
    """
    clip_value = _check_clip(clip_value)
    x, dtype = _to_compute(x)
    def forward(t):
        alpha = _mean_abs(t, output_axes)
        return alpha * sign(t), alpha

    return ops.cast(gated_straight_through(x, forward, _within(clip_value)), dtype)


def stochastic_binary(x, seed=None, clip_value=1.0):
    """Stochastic binarization: ``+1`` with probability ``hard_sigmoid(x)``.

    .. math::
        q(x) = \\begin{cases} +1 & u < \\sigma_h(x) \\\\ -1 & \\text{otherwise}
        \\end{cases}, \\quad u \\sim U[0, 1), \\quad
        \\sigma_h(x) = \\mathrm{clip}\\left(\\frac{x + 1}{2}, 0, 1\\right),
        \\quad \\frac{\\partial q}{\\partial x} = 1_{|x| \\le c}

    Args:
        seed: a ``keras.random.SeedGenerator`` (needed under JAX tracing) or
            an int.

    Reference: M. Courbariaux et al., "BinaryConnect", NeurIPS 2015.

    Example:
    >>> stochastic_binary([-3.0, 3.0], seed=keras.random.SeedGenerator(0))
    [-1., 1.]
    """
    clip_value = _check_clip(clip_value)
    x, dtype = _to_compute(x)
    probability = ops.clip((x + 1.0) / 2.0, 0.0, 1.0)
    noise = keras.random.uniform(ops.shape(x), dtype=x.dtype, seed=seed)
    value = ops.where(noise < probability, ops.ones_like(x), ops.negative(ops.ones_like(x)))
    surrogate = x if clip_value is None else x * _gate(ops.abs(x) <= clip_value, x)
    return ops.cast(straight_through(ops.stop_gradient(value), surrogate), dtype)


def ste_heaviside(x, clip_value=1.0):
    """Binarize to ``{0, 1}`` with the straight-through estimator.

    .. math::
        q(x) = 1_{x > 0}, \\qquad \\frac{\\partial q}{\\partial x} = 1_{|x| \\le c}

    Example:
    >>> ste_heaviside([-0.5, 0.0, 2.0])
    [0., 0., 1.]
    """
    clip_value = _check_clip(clip_value)
    x, dtype = _to_compute(x)
    return ops.cast(
        gated_straight_through(x, lambda t: ops.cast(ops.greater(t, 0), t.dtype),
                               _within(clip_value)),
        dtype,
    )


# ------------------------------------------------------------------ ternary
def ste_tern(
    x,
    threshold_value=0.05,
    ternary_weight_networks=False,
    scaled=False,
    clip_value=1.0,
):
    """Ternarize to ``{-a, 0, +a}`` with the straight-through estimator.

    .. math::
        q(x) = \\alpha \\begin{cases} \\mathrm{sign}(x) & |x| > \\Delta \\\\
        0 & |x| \\le \\Delta \\end{cases}, \\qquad
        \\frac{\\partial q}{\\partial x} = \\alpha \\, 1_{|x| \\le c}

    The threshold is ``threshold_value``, or with
    ``ternary_weight_networks=True`` the TWN rule
    :math:`\\Delta = 0.7 \\cdot \\mathrm{mean}|x|` (per tensor, over non-zero
    entries). With
    ``scaled=True`` the scale is the TWN optimum
    :math:`\\alpha = \\mathrm{mean}_{|x| > \\Delta} |x|` (a constant for the
    gradient); otherwise ``alpha = 1``.

    Reference: F. Li, B. Zhang, B. Liu, "Ternary Weight Networks", 2016.

    Example:
    >>> ste_tern([-0.5, 0.01, 0.2])
    [-1., 0., 1.]
    """
    clip_value = _check_clip(clip_value)
    x, dtype = _to_compute(x)

    def forward(t):
        magnitude = ops.abs(t)
        if ternary_weight_networks:
            threshold = 0.7 * ops.mean(_mean_abs(t, ()))
        else:
            threshold = _like(threshold_value, t)
        above = ops.greater(magnitude, threshold)
        value = ops.where(above, sign(t), ops.zeros((), t.dtype))
        if not scaled:
            return value
        kept = ops.cast(above, t.dtype)
        alpha = ops.sum(magnitude * kept) / ops.maximum(ops.sum(kept), 1.0)
        return alpha * value, alpha

    return ops.cast(gated_straight_through(x, forward, _within(clip_value)), dtype)


# -------------------------------------------------------------------- k-bit
def uniform(x, bits=8, symmetric=True, output_axes=(), clip_value=None):
    """Uniform k-bit quantization with straight-through rounding.

    Symmetric (``n = 2^{b-1} - 1`` levels each side, zero exact):

    .. math::
        s = \\frac{m}{n}, \\quad q(x) = s\\,\\mathrm{clip}(\\mathrm{round}(x / s), -n, n)

    Asymmetric (``L = 2^b - 1`` steps over ``[lo, hi]``, which always
    contains 0 so pruned zeros stay exact; ``z`` is the zero point):

    .. math::
        s = \\frac{hi - lo}{L}, \\quad z = \\mathrm{round}(-lo / s), \\quad
        q(x) = s\\,(\\mathrm{clip}(\\mathrm{round}(x / s) + z, 0, L) - z)

    The range is the tensor's own when ``clip_value`` is ``None``
    (:math:`m = \\max|x|`, ``lo = min(min x, 0)``, ``hi = max(max x, 0)``,
    per index of ``output_axes``; ``()`` = per tensor) and the gradient is 1
    everywhere. A fixed ``clip_value = c`` gives the range ``[-c, c]``
    (symmetric) or ``[0, c]`` (asymmetric: a k-bit ReLU for activations)
    with gradient :math:`1_{x \\in \\text{range}}`. The range is a constant for
    the gradient.

    Reference: B. Jacob et al., "Quantization and Training of Neural Networks
    for Efficient Integer-Arithmetic-Only Inference", CVPR 2018.

    Example:
    >>> uniform([-1.0, 0.1, 0.6], bits=2)   # levels {-1, 0, 1}
    [-1., 0., 1.]
    """
    check_bits(bits)
    if symmetric and bits < 2:
        raise ValueError(
            "Symmetric uniform quantization needs at least 2 bits (1 bit has no "
            "level besides 0); use `ste_sign` or symmetric=False. Received: bits=1"
        )
    clip_value = _check_clip(clip_value)
    x, dtype = _to_compute(x)
    if symmetric:
        levels = float(2 ** (bits - 1) - 1)

        def forward(t):
            if clip_value is None:
                # |t| <= max|t| = levels * scale: no clip needed.
                scale = _max_abs(t, output_axes) / levels
                scale = ops.where(scale > 0, scale, ops.ones((), t.dtype))
                return ops.round(t / scale) * scale
            scale = clip_value / levels
            return ops.clip(ops.round(t / scale), -levels, levels) * scale

        gate = _within(clip_value)
    else:
        steps = float(2**bits - 1)

        def forward(t):
            if clip_value is None:
                axes = reduce_axes(len(t.shape), output_axes)
                low = ops.minimum(ops.min(t, axis=axes, keepdims=True) if axes else t, 0.0)
                high = ops.maximum(ops.max(t, axis=axes, keepdims=True) if axes else t, 0.0)
                scale = (high - low) / steps
                scale = ops.where(scale > 0, scale, ops.ones((), t.dtype))
                zero_point = ops.round(-low / scale)
                return (ops.clip(ops.round(t / scale) + zero_point, 0.0, steps)
                        - zero_point) * scale
            scale = clip_value / steps
            return ops.clip(ops.round(t / scale), 0.0, steps) * scale

        gate = None if clip_value is None else (
            lambda t: ops.logical_and(ops.greater_equal(t, 0), ops.less_equal(t, clip_value)))
    return ops.cast(gated_straight_through(x, forward, gate), dtype)


def dorefa(x, bits=2, mode="weights"):
    """DoReFa-Net k-bit quantization of weights or activations.

    Weights (values in ``[-1, 1]``, gradient through ``tanh`` and the max
    as in the reference code):

    .. math::
        q(w) = 2\\,Q_k\\!\\left(\\frac{\\tanh w}{2 \\max|\\tanh w|} + \\frac12\\right) - 1

    Activations (values in ``[0, 1]``, gradient :math:`1_{0 \\le x \\le 1}`):

    .. math::
        q(x) = Q_k(\\mathrm{clip}(x, 0, 1))

    with :math:`Q_k(r) = \\mathrm{round}((2^k - 1) r) / (2^k - 1)` and a
    straight-through gradient.

    Reference: S. Zhou et al., "DoReFa-Net", 2016.

    Example:
    >>> dorefa([0.2, 0.7], bits=1, mode="activations")
    [0., 1.]
    """
    check_bits(bits)
    if mode not in ("weights", "activations"):
        raise ValueError(
            f"`mode` must be 'weights' or 'activations'. Received: mode={mode!r}"
        )
    x, dtype = _to_compute(x)
    if mode == "activations":
        steps = float(2**bits - 1)
        return ops.cast(
            gated_straight_through(
                x,
                lambda t: ops.round(ops.clip(t, 0.0, 1.0) * steps) / steps,
                lambda t: ops.logical_and(ops.greater_equal(t, 0), ops.less_equal(t, 1)),
            ),
            dtype,
        )
    squashed = ops.tanh(x)
    peak = ops.maximum(ops.max(ops.abs(squashed)), 1e-12)
    unit = squashed / (2.0 * peak) + 0.5
    # 2 Q_k(u) - 1 written as (code - L/2) * (2/L), the affine form a packed
    # export decodes bit for bit.
    steps = float(2**bits - 1)
    value = (ops.round(unit * steps) - steps / 2.0) * (2.0 / steps)
    return ops.cast(straight_through(value, 2.0 * unit - 1.0), dtype)


def lsq_levels(bits, signed=True):
    """``(Q_N, Q_P)`` of LSQ: ``(2^{b-1}, 2^{b-1} - 1)`` signed,
    ``(0, 2^b - 1)`` unsigned."""
    check_bits(bits, low=2 if signed else 1)
    if signed:
        return float(2 ** (bits - 1)), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def lsq_initial_step(x, bits, signed=True):
    """LSQ's initial step size :math:`s_0 = 2\\,\\mathrm{mean}|v| / \\sqrt{Q_P}`
    as a float32 scalar tensor (1.0 when ``x`` is all zeros).

    Example:
    >>> lsq_initial_step([0.5, -0.5], bits=4)
    0.37796447
    """
    _, q_p = lsq_levels(bits, signed)
    mean = ops.mean(ops.abs(ops.cast(ops.convert_to_tensor(x), "float32")))
    step = 2.0 * mean / math.sqrt(q_p)
    return ops.where(step > 0, step, ops.ones_like(step))


def lsq(x, step, bits=4, signed=True, grad_scale=None):
    """Learned Step Size Quantization.

    .. math::
        \\hat v = \\mathrm{round}(\\mathrm{clip}(v / s, -Q_N, Q_P)) \\cdot s

    Gradients (straight-through rounding):

    .. math::
        \\frac{\\partial \\hat v}{\\partial v} = 1_{-Q_N < v/s < Q_P}, \\qquad
        \\frac{\\partial \\hat v}{\\partial s} = g \\cdot \\begin{cases}
        -Q_N & v/s \\le -Q_N \\\\
        \\mathrm{round}(v/s) - v/s & -Q_N < v/s < Q_P \\\\
        Q_P & v/s \\ge Q_P \\end{cases}

    with the gradient scale :math:`g = 1/\\sqrt{N Q_P}` (``N`` = number of
    entries of ``x``, or ``grad_scale`` when given: pass the number of
    features per example for activations). Levels: see :func:`lsq_levels`.

    Reference: S. K. Esser et al., "Learned Step Size Quantization", ICLR
    2020.

    Example:
    >>> lsq([0.26, -3.0], step=0.5, bits=3)   # levels -4..3
    [0.5, -2.0]
    """
    q_n, q_p = lsq_levels(bits, signed)
    x, dtype = _to_compute(x)
    if grad_scale is None:
        size = max(1, math.prod(int(d) for d in x.shape))
        grad_scale = 1.0 / math.sqrt(size * q_p)
    step = _like(step, x)
    step = straight_through(step, step * grad_scale)
    ratio = x / step
    inside = _gate((ratio > -q_n) & (ratio < q_p), x)
    clipped = straight_through(ops.clip(ratio, -q_n, q_p), ratio * inside)
    return ops.cast(straight_through(ops.round(clipped), clipped) * step, dtype)


# -------------------------------------------------------------- activations
def pact(x, clip, bits=4):
    """PACT: k-bit ReLU with a learnable clipping level ``alpha``.

    .. math::
        y = \\mathrm{clip}(x, 0, \\alpha), \\quad
        q(x) = \\mathrm{round}\\!\\left(y \\frac{2^k - 1}{\\alpha}\\right)
        \\frac{\\alpha}{2^k - 1}

    .. math::
        \\frac{\\partial q}{\\partial x} = 1_{0 \\le x < \\alpha}, \\qquad
        \\frac{\\partial q}{\\partial \\alpha} = 1_{x \\ge \\alpha}

    Reference: J. Choi et al., "PACT: Parameterized Clipping Activation for
    Quantized Neural Networks", 2018.

    Example:
    >>> pact([-1.0, 0.5, 7.0], clip=6.0, bits=2)   # levels 0, 2, 4, 6
    [0., 0., 6.]
    """
    check_bits(bits)
    x, dtype = _to_compute(x)
    alpha = _like(clip, x)
    inside = _gate((x >= 0) & (x < alpha), x)
    above = _gate(x >= alpha, x)
    y = straight_through(ops.clip(x, 0.0, ops.stop_gradient(alpha)), x * inside + alpha * above)
    steps = float(2**bits - 1)
    fixed = ops.stop_gradient(alpha)
    value = ops.round(y * steps / fixed) * (fixed / steps)
    return ops.cast(straight_through(value, y), dtype)
