"""Shared pieces of the quantization functions: the two straight-through
gradient constructions, per-channel reductions and argument checks."""

import collections
import math

import keras
from keras import ops

from keras_sparse import backend

__all__ = [
    "straight_through",
    "gated_straight_through",
    "reduce_axes",
    "check_bits",
    "AffineCodes",
]

AffineCodes = collections.namedtuple("AffineCodes", ["codes", "offset", "scale", "bits"])
AffineCodes.__doc__ = """The integer form of a quantized tensor: its value is
``(codes + offset) * scale`` in float32, bit for bit.

``codes`` holds integers in ``[0, 2^bits)`` (as a float tensor shaped like
the input; NaN where the input is NaN); ``offset`` and ``scale`` are
scalars or tensors that broadcast to it (one per output unit for
per-channel quantizers). Quantizers compute it with the arithmetic of their
forward pass (see :meth:`keras_sparse.quantizers.Quantizer.export_codes`),
and a packed export stores ``codes`` at ``bits`` per entry.

Example:
>>> codes, offset, scale, bits = uniform_codes([-1.0, 0.1, 0.6], bits=2)
>>> codes, offset, scale, bits
([0., 1., 2.], -1.0, [1.], 2)
"""


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


def _nan_or(x, value):
    """The constant ``value`` where ``x`` is a number (``inf`` included), NaN
    where ``x`` is NaN: ``clip(x, value, value)``.

    A select sends NaN to its second branch (every comparison with NaN is
    false); putting this there instead of the constant makes a quantizer
    propagate NaN for the price of one clip, as Larq's ``sign(NaN) = NaN``.
    """
    return ops.clip(x, value, value)


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
    magnitude = ops.abs(x)
    return _masked_mean(magnitude, ops.not_equal(magnitude, 0), axes)


def _masked_mean(magnitude, kept, axes):
    """Mean of the non-negative ``magnitude`` where ``kept``, over ``axes``
    (``None``: all; kept dims; 0 where nothing is kept).

    Computed as ``m + mean(magnitude - m)`` with ``m`` the largest kept
    magnitude: the same value in exact arithmetic, and exactly ``m`` when
    every kept magnitude equals ``m`` (a plain sum of ``n`` copies of ``m``
    divided by ``n`` may be an ulp off). Scales such as the XNOR ``alpha``
    are then reproduced bit for bit from an already quantized tensor.
    """
    zero = ops.zeros((), magnitude.dtype)
    top = ops.max(ops.where(kept, magnitude, zero), axis=axes, keepdims=True)
    count = ops.sum(ops.cast(kept, magnitude.dtype), axis=axes, keepdims=True)
    shortfall = ops.sum(ops.where(kept, magnitude - top, zero), axis=axes, keepdims=True)
    mean = top + shortfall / ops.maximum(count, 1.0)
    # An infinite magnitude: inf - inf would make the mean NaN.
    return ops.where(ops.isinf(top), top, mean)


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
