"""k-bit quantization functions: uniform (symmetric or with a zero point),
DoReFa, LSQ with its learned step, and PACT with its learned clip."""

import math

from keras import ops

from keras_sparse.ops.quantize.base import AffineCodes
from keras_sparse.ops.quantize.base import _check_clip
from keras_sparse.ops.quantize.base import _gate
from keras_sparse.ops.quantize.base import _like
from keras_sparse.ops.quantize.base import _max_abs
from keras_sparse.ops.quantize.base import _to_compute
from keras_sparse.ops.quantize.base import _within
from keras_sparse.ops.quantize.base import check_bits
from keras_sparse.ops.quantize.base import gated_straight_through
from keras_sparse.ops.quantize.base import reduce_axes
from keras_sparse.ops.quantize.base import straight_through

__all__ = [
    "uniform",
    "uniform_codes",
    "affine_grid",
    "dorefa",
    "dorefa_codes",
    "lsq_levels",
    "lsq_initial_step",
    "lsq",
    "lsq_codes",
    "pact",
    "pact_codes",
]


# -------------------------------------------------------------------- k-bit
def _unfolded(value, like):
    """The constant ``value`` as a tensor shaped like ``like`` that no
    compiler can fold (it depends on ``like``; 1 where ``like`` is NaN).

    Dividing by it stays an IEEE division: XLA turns a division by a
    constant into a product with its reciprocal, which differs in the last
    bit, and ``fl(fl(n * fl(m / n)) / n) == fl(m / n)`` (on which
    idempotence rests) holds for the division only.
    """
    return ops.where(ops.isnan(like), ops.ones((), like.dtype), ops.full((), value, like.dtype))


def affine_grid(low, high, bits):
    """Scale and zero point of asymmetric :func:`uniform` quantization of
    the range ``[low, high]`` (``low <= 0 <= high``, tensors of the same
    shape).

    In exact arithmetic :math:`s = (hi - lo) / L` and
    :math:`z = \\mathrm{round}(-lo / s)` with ``L = 2^b - 1``. In float32 the
    scale is then moved by at most an ulp or two, to a value that the range
    of its own grid gives back bit for bit: with ``n = z`` (``L`` when
    ``z = 0``) and the grid end ``e = n s`` (``-lo`` or ``hi`` of the
    quantized tensor), the scale is ``fl(e / n)``, and ``fl(fl(n s) / n)`` is
    ``s`` for every ``s`` that is itself a quotient by ``n``. This is what
    makes :func:`uniform` idempotent: the range of ``q(x)`` yields the same
    scale and zero point, so ``q(q(x)) == q(x)`` exactly.

    Returns:
        ``(scale, zero_point)``, float tensors shaped like ``low``; the
        scale is 1 where the range is empty, the zero point an integer in
        ``[0, L]``.

    Example:
    >>> affine_grid([-1.0], [2.0], bits=2)   # levels -1, 0, 1, 2
    ([1.], [1.])
    """
    check_bits(bits)
    low = ops.convert_to_tensor(low)
    high = _like(high, low)
    steps = float(2**bits - 1)
    span = (high - low) / steps
    first = ops.where(span > 0, span, ops.ones((), low.dtype))
    zero_point = ops.clip(ops.round(-low / first), 0.0, steps)
    divisor = ops.where(zero_point > 0, zero_point, ops.full((), steps, low.dtype))
    end = ops.where(zero_point > 0, -low, high)
    # The range already ends on a grid point (the input is quantized): the
    # scale is its quotient. Otherwise the nearest quotient by `divisor`.
    from_end = end / divisor
    on_grid = ops.less_equal(ops.abs(from_end - first), first * 2.0**-16)
    scale = ops.where(on_grid, from_end, (divisor * first) / divisor)
    return scale, zero_point


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
    everywhere. The asymmetric scale is adjusted by an ulp or two so that
    the range of the output gives back the same grid, and ``lo`` and ``hi``
    take the end codes ``0`` and ``L`` (see :func:`affine_grid`): quantizing
    the output again returns it unchanged. A fixed ``clip_value = c`` gives the range ``[-c, c]``
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
    _check_uniform(bits, symmetric)
    clip_value = _check_clip(clip_value)
    x, dtype = _to_compute(x)

    def forward(t):
        levels, scale, _ = _uniform_levels(t, bits, symmetric, output_axes, clip_value)
        return levels * scale

    if clip_value is None:
        gate = None
    elif symmetric:
        gate = _within(clip_value)
    else:
        gate = lambda t: ops.logical_and(  # noqa: E731
            ops.greater_equal(t, 0), ops.less_equal(t, clip_value))
    return ops.cast(gated_straight_through(x, forward, gate), dtype)


def _check_uniform(bits, symmetric):
    if symmetric and bits < 2:
        raise ValueError(
            "Symmetric uniform quantization needs at least 2 bits (1 bit has no "
            "level besides 0); use `ste_sign` or symmetric=False. Received: bits=1"
        )


def _uniform_levels(t, bits, symmetric, output_axes, clip_value):
    """``(levels, scale, offset)`` of :func:`uniform`: its output is
    ``levels * scale``, with integer ``levels`` in
    ``[offset, offset + 2^b - 1]``."""
    if symmetric:
        levels = float(2 ** (bits - 1) - 1)
        if clip_value is None:
            # |t| <= max|t| = levels * scale: no clip needed. An IEEE
            # division, so the top level levels * scale of the output
            # gives back this scale (q(q(x)) == q(x)).
            top = _max_abs(t, output_axes)
            scale = top / _unfolded(levels, top)
            scale = ops.where(scale > 0, scale, ops.ones((), t.dtype))
            return ops.round(t / scale), scale, -levels
        scale = clip_value / levels
        return ops.clip(ops.round(t / scale), -levels, levels), scale, -levels
    steps = float(2**bits - 1)
    if clip_value is not None:
        scale = clip_value / steps
        return ops.clip(ops.round(t / scale), 0.0, steps), scale, 0.0
    axes = reduce_axes(len(t.shape), output_axes)
    low = ops.minimum(ops.min(t, axis=axes, keepdims=True) if axes else t, 0.0)
    high = ops.maximum(ops.max(t, axis=axes, keepdims=True) if axes else t, 0.0)
    scale, zero_point = affine_grid(low, high, bits)
    codes = ops.clip(ops.round(t / scale) + zero_point, 0.0, steps)
    # The ends of the range take the end codes (rounding alone may leave
    # the top one empty when the zero point was rounded down), so the
    # output spans the whole grid.
    codes = ops.where(
        ops.logical_and(ops.greater_equal(t, high), ops.greater(high, 0.0)),
        ops.full((), steps, t.dtype), codes,
    )
    codes = ops.where(
        ops.logical_and(ops.less_equal(t, low), ops.less(low, 0.0)),
        ops.zeros((), t.dtype), codes,
    )
    return codes - zero_point, scale, -zero_point


def uniform_codes(x, bits=8, symmetric=True, output_axes=(), clip_value=None):
    """The :class:`AffineCodes` of :func:`uniform` (same arguments): codes
    ``level - offset`` in ``[0, 2^b - 1]``, the offset (``-(2^{b-1} - 1)``
    symmetric, ``-z`` per output unit asymmetric) and the scale, computed as
    the forward pass does.

    Example:
    >>> uniform_codes([-1.0, 0.1, 0.6], bits=2).codes
    [0., 1., 2.]
    """
    check_bits(bits)
    _check_uniform(bits, symmetric)
    clip_value = _check_clip(clip_value)
    x, _ = _to_compute(x)
    levels, scale, offset = _uniform_levels(x, bits, symmetric, output_axes, clip_value)
    return AffineCodes(levels - offset, offset, scale, bits)


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
    straight-through gradient. An all-zero weight tensor (no
    :math:`\\max|\\tanh w|`) quantizes to ``+1``.

    Quantizing twice changes nothing for activations and for weights with
    up to 3 bits. For weights with 4 or more bits it does: the ``tanh`` of
    an already quantized tensor moves its inner levels outwards, by design
    of the method.

    Reference: S. Zhou et al., "DoReFa-Net", 2016.

    Example:
    >>> dorefa([0.2, 0.7], bits=1, mode="activations")
    [0., 1.]
    """
    check_bits(bits)
    _check_mode(mode)
    x, dtype = _to_compute(x)
    steps = float(2**bits - 1)
    if mode == "activations":
        return ops.cast(
            gated_straight_through(
                x,
                lambda t: _dorefa_activation_codes(t, steps) * (1.0 / steps),
                lambda t: ops.logical_and(ops.greater_equal(t, 0), ops.less_equal(t, 1)),
            ),
            dtype,
        )
    codes, unit = _dorefa_weight_codes(x, steps)
    # 2 Q_k(u) - 1 written as (code - L/2) * (2/L), the affine form a packed
    # export decodes bit for bit.
    value = (codes - steps / 2.0) * (2.0 / steps)
    return ops.cast(straight_through(value, 2.0 * unit - 1.0), dtype)


def _check_mode(mode):
    if mode not in ("weights", "activations"):
        raise ValueError(
            f"`mode` must be 'weights' or 'activations'. Received: mode={mode!r}"
        )


def _dorefa_activation_codes(t, steps):
    # The output is codes * (1 / L), a product rather than a division by L,
    # so that it is the affine form an export decodes bit for bit (XLA
    # turns the division into this product anyway).
    return ops.round(ops.clip(t, 0.0, 1.0) * steps)


def _dorefa_weight_codes(x, steps):
    """``(codes, unit)``: the codes ``round(L u)`` of DoReFa weights, and
    ``u`` with the floored peak (for the gradient)."""
    squashed = ops.tanh(x)
    top = ops.max(ops.abs(squashed))
    peak = ops.maximum(top, 1e-12)
    unit = squashed / (2.0 * peak) + 0.5
    # The forward pass divides by the peak itself, however small, so the
    # largest entry is always at a range end (+-1); a tensor without a peak
    # (all zeros) is +1, as sign(0). Both keep q(q(w)) == q(w) (bits <= 3).
    # The gradient keeps the floored peak.
    exact = ops.where(top > 0, squashed / (2.0 * ops.where(top > 0, top, 1.0)) + 0.5, 1.0)
    return ops.round(exact * steps), unit


def dorefa_codes(x, bits=2, mode="weights"):
    """The :class:`AffineCodes` of :func:`dorefa` (same arguments): codes in
    ``[0, 2^k - 1]`` with offset ``-L/2`` and scale ``2/L`` (weights) or
    offset 0 and scale ``1/L`` (activations), ``L = 2^k - 1``.

    Example:
    >>> dorefa_codes([0.2, 0.7], bits=1, mode="activations").codes
    [0., 1.]
    """
    check_bits(bits)
    _check_mode(mode)
    x, _ = _to_compute(x)
    steps = float(2**bits - 1)
    if mode == "activations":
        return AffineCodes(_dorefa_activation_codes(x, steps), 0.0, 1.0 / steps, bits)
    codes, _ = _dorefa_weight_codes(x, steps)
    return AffineCodes(codes, -steps / 2.0, 2.0 / steps, bits)


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
    # The forward value of the step (and so of every product and quotient
    # below) is `step` itself, as in lsq_codes: s + (g s - g s) is s.
    step = straight_through(step, step * grad_scale)
    ratio = x / step
    inside = _gate((ratio > -q_n) & (ratio < q_p), x)
    clipped = straight_through(_lsq_clip(ratio, q_n, q_p), ratio * inside)
    return ops.cast(straight_through(ops.round(clipped), clipped) * step, dtype)


def _lsq_clip(ratio, q_n, q_p):
    return ops.clip(ratio, -q_n, q_p)


def lsq_codes(x, step, bits=4, signed=True):
    """The :class:`AffineCodes` of :func:`lsq`: codes
    ``round(clip(x / s, -Q_N, Q_P)) + Q_N`` with offset ``-Q_N`` and the
    step as scale.

    Example:
    >>> lsq_codes([0.26, -3.0], step=0.5, bits=3).codes
    [5., 0.]
    """
    q_n, q_p = lsq_levels(bits, signed)
    x, _ = _to_compute(x)
    step = _like(step, x)
    levels = ops.round(_lsq_clip(x / step, q_n, q_p))
    return AffineCodes(levels + q_n, -q_n, step, bits)


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
    value = _pact_levels(y, fixed, steps) * (fixed / steps)
    return ops.cast(straight_through(value, y), dtype)


def _pact_levels(y, alpha, steps):
    return ops.round(y * steps / alpha)


def pact_codes(x, clip, bits=4):
    """The :class:`AffineCodes` of :func:`pact`: codes
    ``round(clip(x, 0, alpha) L / alpha)`` in ``[0, L]``, offset 0 and scale
    ``alpha / L`` (``L = 2^k - 1``).

    Example:
    >>> pact_codes([-1.0, 0.5, 7.0], clip=6.0, bits=2).codes
    [0., 0., 3.]
    """
    check_bits(bits)
    x, _ = _to_compute(x)
    alpha = _like(clip, x)
    steps = float(2**bits - 1)
    return AffineCodes(_pact_levels(ops.clip(x, 0.0, alpha), alpha, steps), 0.0,
                       alpha / steps, bits)
