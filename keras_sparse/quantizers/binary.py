"""Binary and ternary quantizers: ``sign`` with its straight-through
gradients, XNOR scaling, stochastic binarization, and ternarization."""

import keras

from keras_sparse.ops import quantize as q_ops
from keras_sparse.quantizers.base import Quantizer
from keras_sparse.quantizers.base import _channels
from keras_sparse.quantizers.base import _check_number
from keras_sparse.quantizers.base import _register

__all__ = [
    "SteSign",
    "ApproxSign",
    "SwishSign",
    "MagnitudeAwareSign",
    "StochasticBinary",
    "SteTern",
]


# ----------------------------------------------------------------- binary
class _Sign(Quantizer):
    """``±1`` quantizers: their output is ``sign(x)`` outside training,
    whatever their gradient."""

    precision = 1

    def export_codes(self, x, state=None, output_axes=None):
        return q_ops.sign_codes(x)


@_register("ste_sign")
class SteSign(_Sign):
    """Binary ±1 with the straight-through estimator (see
    :func:`keras_sparse.ops.quantize.ste_sign`).

    Args:
        clip_value: the gradient passes where ``|x| <= clip_value``
            (``None``: everywhere).

    Example:
    >>> ks.quantizers.SteSign()([-0.3, 0.0])
    [-1., 1.]
    """

    precision = 1

    def __init__(self, clip_value=1.0):
        self.clip_value = _check_number(clip_value, "clip_value", allow_none=True)

    def get_config(self):
        return {"clip_value": self.clip_value}

    def __call__(self, x, state=None, output_axes=None, training=None):
        return q_ops.ste_sign(x, self.clip_value)


@_register("approx_sign")
class ApproxSign(_Sign):
    """Binary ±1 with Bi-Real Net's ``2 - 2|x|`` gradient (see
    :func:`keras_sparse.ops.quantize.approx_sign`).

    Example:
    >>> ks.quantizers.ApproxSign()([-0.3, 0.0])
    [-1., 1.]
    """

    precision = 1

    def __call__(self, x, state=None, output_axes=None, training=None):
        return q_ops.approx_sign(x)


@_register("swish_sign")
class SwishSign(_Sign):
    """Binary ±1 with the SignSwish gradient of BNN+ (see
    :func:`keras_sparse.ops.quantize.swish_sign`).

    Args:
        beta: sharpness of the surrogate.

    Example:
    >>> ks.quantizers.SwishSign(beta=5.0)([-0.3, 0.0])
    [-1., 1.]
    """

    precision = 1

    def __init__(self, beta=5.0):
        self.beta = _check_number(beta, "beta")

    def get_config(self):
        return {"beta": self.beta}

    def __call__(self, x, state=None, output_axes=None, training=None):
        return q_ops.swish_sign(x, self.beta)


@_register("magnitude_aware_sign")
class MagnitudeAwareSign(Quantizer):
    """±alpha per output unit, ``alpha = mean|W|`` (XNOR-Net / BWN; see
    :func:`keras_sparse.ops.quantize.magnitude_aware_sign`).

    Args:
        clip_value: the gradient passes where ``|x| <= clip_value``.

    Example:
    >>> ks.quantizers.MagnitudeAwareSign()([[0.5, -2.0], [-1.5, 1.0]])
    [[1.0, -1.5], [-1.0, 1.5]]
    """

    precision = 1
    elementwise = False

    def __init__(self, clip_value=1.0):
        self.clip_value = _check_number(clip_value, "clip_value", allow_none=True)

    def get_config(self):
        return {"clip_value": self.clip_value}

    def side_values(self, shape, output_axes=None):
        return _channels(shape, output_axes)

    def export_codes(self, x, state=None, output_axes=None):
        return q_ops.magnitude_aware_sign_codes(x, output_axes)

    def __call__(self, x, state=None, output_axes=None, training=None):
        return q_ops.magnitude_aware_sign(x, output_axes, self.clip_value)


@_register("stochastic_binary")
class StochasticBinary(_Sign):
    """Stochastic ±1 (``+1`` with probability ``hard_sigmoid(x)``) during
    training, ``sign(x)`` otherwise; straight-through gradient (see
    :func:`keras_sparse.ops.quantize.stochastic_binary`).

    The random state is a ``keras.random.SeedGenerator`` owned by the layer;
    its state is saved with the layer (``model.save``), so draws continue
    identically after loading.

    Args:
        clip_value: the gradient passes where ``|x| <= clip_value``.
        seed: optional int seed.

    Example:
    >>> ks.quantizers.StochasticBinary(seed=1)([-3.0, 3.0], training=True)
    [-1., 1.]
    """

    precision = 1
    fusable = False

    def __init__(self, clip_value=1.0, seed=None):
        self.clip_value = _check_number(clip_value, "clip_value", allow_none=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
        self.seed = seed
        self._own_seed = None

    def get_config(self):
        return {"clip_value": self.clip_value, "seed": self.seed}

    def build(self, layer, shape, name, value=None):
        return {"seed_generator": keras.random.SeedGenerator(self.seed, name=f"{name}_seed")}

    def __call__(self, x, state=None, output_axes=None, training=None):
        if not training:
            return q_ops.ste_sign(x, self.clip_value)
        if state is None:
            if self._own_seed is None:
                self._own_seed = keras.random.SeedGenerator(self.seed)
            seed = self._own_seed
        else:
            seed = state["seed_generator"]
        return q_ops.stochastic_binary(x, seed, self.clip_value)


# ---------------------------------------------------------------- ternary
@_register("ste_tern")
class SteTern(Quantizer):
    """Ternary ``{-alpha, 0, +alpha}`` with the straight-through estimator
    (see :func:`keras_sparse.ops.quantize.ste_tern`).

    Args:
        threshold_value: fixed threshold (ignored with TWN).
        ternary_weight_networks: use ``0.7 * mean|W|`` as the threshold.
        scaled: multiply by the TWN scale ``alpha`` (else ``alpha = 1``).
        clip_value: the gradient passes where ``|x| <= clip_value``.

    Example:
    >>> ks.quantizers.SteTern()([-0.5, 0.01, 0.2])
    [-1., 0., 1.]
    """

    precision = 2
    keeps_zero = True

    def __init__(self, threshold_value=0.05, ternary_weight_networks=False, scaled=False,
                 clip_value=1.0):
        self.threshold_value = _check_number(threshold_value, "threshold_value")
        if not isinstance(ternary_weight_networks, bool):
            raise ValueError(
                "`ternary_weight_networks` must be a bool. Received: "
                f"ternary_weight_networks={ternary_weight_networks!r}"
            )
        if not isinstance(scaled, bool):
            raise ValueError(f"`scaled` must be a bool. Received: scaled={scaled!r}")
        self.ternary_weight_networks = ternary_weight_networks
        self.scaled = scaled
        self.clip_value = _check_number(clip_value, "clip_value", allow_none=True)
        self.elementwise = not (ternary_weight_networks or scaled)

    def get_config(self):
        return {
            "threshold_value": self.threshold_value,
            "ternary_weight_networks": self.ternary_weight_networks,
            "scaled": self.scaled,
            "clip_value": self.clip_value,
        }

    def side_values(self, shape, output_axes=None):
        return 1 if self.scaled else 0

    def export_codes(self, x, state=None, output_axes=None):
        return q_ops.ste_tern_codes(
            x, self.threshold_value, self.ternary_weight_networks, self.scaled)

    def __call__(self, x, state=None, output_axes=None, training=None):
        return q_ops.ste_tern(
            x, self.threshold_value, self.ternary_weight_networks, self.scaled, self.clip_value
        )
