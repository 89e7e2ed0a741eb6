"""Binary and ternary quantization functions: ``sign`` with the
straight-through, Bi-Real and SignSwish gradients, XNOR scaling,
stochastic binarization, ``{0, 1}`` activations, and ternarization."""

import keras
from keras import ops

from keras_sparse.ops.quantize.base import AffineCodes
from keras_sparse.ops.quantize.base import _check_clip
from keras_sparse.ops.quantize.base import _like
from keras_sparse.ops.quantize.base import _masked_mean
from keras_sparse.ops.quantize.base import _mean_abs
from keras_sparse.ops.quantize.base import _nan_or
from keras_sparse.ops.quantize.base import _to_compute
from keras_sparse.ops.quantize.base import _within
from keras_sparse.ops.quantize.base import gated_straight_through
from keras_sparse.ops.quantize.base import straight_through

__all__ = [
    "sign",
    "ste_sign",
    "approx_sign",
    "swish_sign",
    "magnitude_aware_sign",
    "stochastic_binary",
    "ste_heaviside",
    "ste_tern",
    "sign_codes",
    "magnitude_aware_sign_codes",
    "ste_heaviside_codes",
    "ste_tern_codes",
]


# ------------------------------------------------------------------- binary
def sign(x):
    """Sign with ``sign(0) = +1`` (forward only; no useful gradient).

    .. math::
        \\mathrm{sign}(x) = \\begin{cases} +1 & x \\ge 0 \\\\ -1 & x < 0 \\end{cases}

    and ``sign(NaN) = NaN`` (``keras.ops.sign`` is 0 at 0, and 0 at NaN on
    torch).

    Example:
    >>> sign([-0.5, 0.0, 2.0, float("nan")])
    [-1., 1., 1., nan]
    """
    x = ops.convert_to_tensor(x)
    if keras.backend.is_float_dtype(x.dtype):
        # NaN fails `x < 0` and takes the clip branch, which is 1 for numbers.
        positive = _nan_or(x, 1.0)
    else:
        positive = ops.ones((), x.dtype)
    return ops.where(ops.less(x, 0), ops.full((), -1, x.dtype), positive)


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


def _sign_affine(signs, scale):
    """``±scale`` written as ``(code - 1/2) * 2 scale`` with 1-bit codes
    (``fl(±1/2 * 2s) = ±s`` exactly)."""
    return AffineCodes((signs + 1.0) * 0.5, -0.5, 2.0 * scale, 1)


def sign_codes(x):
    """The :class:`AffineCodes` of :func:`sign` (and of every ``±1``
    quantizer: ``ste_sign``, ``approx_sign``, ``swish_sign``,
    ``stochastic_binary`` outside training): code 1 where ``x >= 0``, 0
    elsewhere, decoded as ``(code - 1/2) * 2``.

    Example:
    >>> sign_codes([-0.5, 0.0, 2.0]).codes
    [0., 1., 1.]
    """
    x, _ = _to_compute(x)
    return _sign_affine(sign(x), 1.0)


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


def magnitude_aware_sign_codes(x, output_axes=None):
    """The :class:`AffineCodes` of :func:`magnitude_aware_sign`: 1-bit sign
    codes and the scale ``2 alpha`` per output unit, with ``alpha`` computed
    as the forward pass does.

    Example:
    >>> magnitude_aware_sign_codes([[0.5, -2.0], [-1.5, 1.0]]).scale
    [[2.0, 3.0]]
    """
    x, _ = _to_compute(x)
    return _sign_affine(sign(x), _mean_abs(x, output_axes))


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
    value = ops.where(noise < probability, ops.ones((), x.dtype), _nan_or(x, -1.0))
    # A select, not a product with the gate: inf * 0 would be NaN.
    surrogate = x if clip_value is None else ops.where(
        ops.abs(x) <= clip_value, x, ops.zeros((), x.dtype)
    )
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
    return ops.cast(gated_straight_through(x, _heaviside, _within(clip_value)), dtype)


def _heaviside(t):
    # NaN fails `t <= 0` and takes the clip branch (1 for numbers).
    return ops.where(ops.less_equal(t, 0), ops.zeros((), t.dtype), _nan_or(t, 1.0))


def ste_heaviside_codes(x):
    """The :class:`AffineCodes` of :func:`ste_heaviside`: the ``{0, 1}``
    output is its own code (offset 0, scale 1).

    Example:
    >>> ste_heaviside_codes([-0.5, 0.0, 2.0]).codes
    [0., 0., 1.]
    """
    x, _ = _to_compute(x)
    return AffineCodes(_heaviside(x), 0.0, 1.0, 1)


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
        value, alpha = _ternary(t, threshold_value, ternary_weight_networks, scaled)
        if alpha is None:
            return value
        return alpha * value, alpha

    return ops.cast(gated_straight_through(x, forward, _within(clip_value)), dtype)


def _ternary(t, threshold_value, ternary_weight_networks, scaled):
    """``(levels, alpha)``: the ``{-1, 0, 1}`` levels of :func:`ste_tern`
    and its scale (``None`` unscaled); the output is ``alpha * levels``."""
    magnitude = ops.abs(t)
    if ternary_weight_networks:
        threshold = 0.7 * ops.mean(_mean_abs(t, ()))
    else:
        threshold = _like(threshold_value, t)
    above = ops.greater(magnitude, threshold)
    # NaN is never above the threshold; the clip keeps it NaN (and
    # turns -0.0 into 0.0 through the magnitude).
    value = ops.where(above, sign(t), _nan_or(magnitude, 0.0))
    if not scaled:
        return value, None
    return value, ops.reshape(_masked_mean(magnitude, above, None), ())


def ste_tern_codes(x, threshold_value=0.05, ternary_weight_networks=False, scaled=False):
    """The :class:`AffineCodes` of :func:`ste_tern`: 2-bit codes
    ``level + 1`` with offset -1 and the scale ``alpha`` (1 unscaled),
    computed as the forward pass does.

    Example:
    >>> ste_tern_codes([-0.5, 0.01, 0.2]).codes
    [0., 1., 2.]
    """
    x, _ = _to_compute(x)
    value, alpha = _ternary(x, threshold_value, ternary_weight_networks, scaled)
    return AffineCodes(value + 1.0, -1.0, 1.0 if alpha is None else alpha, 2)
