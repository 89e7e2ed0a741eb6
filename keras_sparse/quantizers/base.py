"""The quantizer base class, the alias registry, shared argument checks and
the identity quantizer."""

import math

from keras import ops

from keras_sparse import config as config_lib
from keras_sparse.ops import quantize as q_ops

#: alias -> class; every quantizer module registers here.
REGISTRY = {}

__all__ = ["Quantizer", "Identity", "REGISTRY", "AffineCodes"]

AffineCodes = q_ops.AffineCodes


class Quantizer(config_lib.ConfigObject):
    """Base class of all quantizers.

    Subclasses implement :meth:`__call__` and, when they own learnable or
    random state, :meth:`build` (and :meth:`initialize` for data-dependent
    initial values).

    Quantizers are idempotent: with the same state and ``training=False``,
    ``q(q(x)) == q(x)`` exactly for finite float32 ``x`` (the exception,
    ``DoReFa`` weights with 4 or more bits, says so).

    Attributes:
        precision: bits per value once packed (class attribute, or set per
            instance by k-bit quantizers).
        elementwise: whether each output entry depends on the same input
            entry only (and the quantizer's own state), not on statistics of
            the tensor; layers then skip zeroing pruned entries before
            quantizing.
        fusable: whether layers may compile the quantizer with the mask
            into one fused kernel on TensorFlow (deterministic math only).
        keeps_zero: whether an exact 0 is quantized to an exact 0 for any
            state (``uniform``, ternary, ``lsq``, ...; not ``sign``, for
            which ``sign(0) = +1``). Layers then zero pruned entries before
            quantizing and need no mask after it.
    """

    precision = 32
    elementwise = True
    keeps_zero = False
    fusable = True

    def build(self, layer, shape, name, value=None):
        """Create this quantizer's state for one tensor of ``layer``.

        Args:
            layer: the Keras layer that owns the state (variables are made
                with ``layer.add_weight``).
            shape: the shape of one quantized tensor (for activations, the
                shape of one example, without the batch axis).
            name: prefix for variable names, e.g. ``"kernel_quantizer"``.
            value: the tensor's current value (weights) or ``None``
                (activations).

        Returns:
            A dict passed back to :meth:`__call__` as ``state`` (empty by
            default).
        """
        return {}

    def initialize(self, state, value, mask=None):
        """Reset data-dependent state from ``value`` (e.g. after weights were
        copied into a converted layer). ``mask`` marks the kept entries."""

    def calibrate(self, state, inputs):
        """Set data-dependent state of an input quantizer from a flat numpy
        array of the inputs it sees (``ks.calibrate``). Returns whether the
        state changed (by default there is nothing to set)."""
        return False

    def side_values(self, shape, output_axes=None):
        """Number of float32 values (scales, zero points) stored next to the
        packed values of a tensor of ``shape`` (for the report and export)."""
        return 0

    def export_codes(self, x, state=None, output_axes=None):
        """The integer form of ``self(x, state, output_axes,
        training=False)``, for a packed export.

        A quantizer with integer levels overrides this with the arithmetic
        of its forward pass (the ``*_codes`` functions of
        :mod:`keras_sparse.ops.quantize` share it), so that
        ``(codes + offset) * scale`` gives its output bit for bit; the
        export then stores each weight at ``bits`` (rounded up to 1, 2, 4
        or 8) plus the offset and scale. This default, ``None``, means the
        quantizer has no such form (``Identity``): the export stores its
        output as floats.

        Args:
            x: the float tensor the layer quantizes (its latent weight, with
                pruned entries already zero where the layer zeroes them
                first).
            state: as for :meth:`__call__`.
            output_axes: as for :meth:`__call__`.

        Returns:
            An :class:`AffineCodes` ``(codes, offset, scale, bits)`` or
            ``None``.

        Example:
        >>> ks.quantizers.Uniform(bits=2).export_codes([[-1.0], [0.1], [0.6]]).codes
        [[0.], [1.], [2.]]
        """
        return None

    def __call__(self, x, state=None, output_axes=None, training=None):
        """Quantize ``x``.

        Args:
            x: float tensor.
            state: the dict :meth:`build` returned, or ``None`` (stateless
                use: learnable quantities take their initial values).
            output_axes: axes of ``x`` that index output units, for
                per-channel statistics (``None`` = last axis, ``()`` = per
                tensor). Layers pass their weight layout here and ``()``
                for inputs.
            training: whether the call is a training step (stochastic
                quantizers are deterministic otherwise).
        """
        raise NotImplementedError


def _register(*aliases):
    return config_lib.register(REGISTRY, *aliases)


def _channels(shape, output_axes):
    """Number of per-channel statistics of a tensor of ``shape``."""
    ndim = len(shape)
    kept = set(range(ndim)) - set(q_ops.reduce_axes(ndim, output_axes))
    return math.prod(shape[a] for a in kept)


def _check_number(value, name, positive=True, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        positive and value <= 0
    ):
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
        )
    return float(value)


@_register("identity")
class Identity(Quantizer):
    """No quantization: returns its input. ``precision`` only labels the
    values (e.g. ``Identity(precision=8)`` for a layer kept at 8 bits
    elsewhere).

    Example:
    >>> ks.quantizers.Identity()([0.25])
    [0.25]
    """

    def __init__(self, precision=32):
        if isinstance(precision, bool) or not isinstance(precision, int) or precision < 1:
            raise ValueError(
                f"`precision` must be a positive integer. Received: precision={precision!r}"
            )
        self.precision = precision
        self.keeps_zero = True

    def get_config(self):
        return {"precision": self.precision}

    def __call__(self, x, state=None, output_axes=None, training=None):
        return ops.convert_to_tensor(x)
