"""Quantizers: serializable objects that turn a float tensor into binary,
ternary or k-bit values with a straight-through gradient.

A quantizer holds hyperparameters only (floor 2); the math is in
:mod:`keras_sparse.ops.quantize`. Learnable quantizer state (the LSQ step,
the PACT clip, a random seed) belongs to the *layer* that uses the quantizer:
the layer calls :meth:`Quantizer.build` once per quantized tensor, which
creates the variables with ``layer.add_weight`` (so they are trained, saved
and restored with the layer) and returns them in a ``state`` dict the layer
passes back on every call. One quantizer instance can therefore serve many
layers.

Each quantizer declares ``precision``, the bits one value takes once
packed (1 for binary, 2 for ternary, ``bits`` for k-bit), which
:func:`keras_sparse.report` and binary optimizers read.

Strings accepted by :func:`get`: every alias below, plus ``"binary"``
(``SteSign()``: values exactly ±1, as Larq's BinaryNet layers) and
``"ternary"`` (``SteTern(ternary_weight_networks=True, scaled=True)``: the
TWN rule). An int ``k`` means ``k`` bits: ``1`` is ``SteSign()``, ``2``-``8``
is ``Uniform(bits=k)``.

Example:
>>> q = ks.quantizers.get("ste_sign")
>>> q([-0.3, 0.0, 2.0])
[-1., 1., 1.]
>>> ks.layers.SparseDense(64, kernel_quantizer="ste_sign", input_quantizer="ste_sign")
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sparse import config as config_lib
from keras_sparse.ops import quantize as q_ops

REGISTRY = {}

__all__ = [
    "Quantizer",
    "Identity",
    "SteSign",
    "ApproxSign",
    "SwishSign",
    "MagnitudeAwareSign",
    "StochasticBinary",
    "SteTern",
    "Uniform",
    "DoReFa",
    "LSQ",
    "SteHeaviside",
    "PACT",
    "REGISTRY",
    "get",
    "serialize",
]


class Quantizer(config_lib.ConfigObject):
    """Base class of all quantizers.

    Subclasses implement :meth:`__call__` and, when they own learnable or
    random state, :meth:`build` (and :meth:`initialize` for data-dependent
    initial values).

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


# ----------------------------------------------------------------- binary
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


@_register("ste_sign")
class SteSign(Quantizer):
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
class ApproxSign(Quantizer):
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
class SwishSign(Quantizer):
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

    def __call__(self, x, state=None, output_axes=None, training=None):
        return q_ops.magnitude_aware_sign(x, output_axes, self.clip_value)


@_register("stochastic_binary")
class StochasticBinary(Quantizer):
    """Stochastic ±1 (``+1`` with probability ``hard_sigmoid(x)``) during
    training, ``sign(x)`` otherwise; straight-through gradient (see
    :func:`keras_sparse.ops.quantize.stochastic_binary`).

    The random state is a ``keras.random.SeedGenerator`` owned by the layer.

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

    def __call__(self, x, state=None, output_axes=None, training=None):
        return q_ops.ste_tern(
            x, self.threshold_value, self.ternary_weight_networks, self.scaled, self.clip_value
        )


# ------------------------------------------------------------------ k-bit
@_register("uniform")
class Uniform(Quantizer):
    """Uniform k-bit quantization with straight-through rounding (see
    :func:`keras_sparse.ops.quantize.uniform`).

    Args:
        bits: bit width, 1-8 (symmetric needs at least 2).
        per_channel: one range per output unit (the layer's weight layout)
            instead of one per tensor. Inputs are always per tensor.
        symmetric: range ``[-m, m]`` with ``2^{b-1} - 1`` levels each side
            (zero exact); else ``[lo, hi]`` with a zero point.
        clip_value: a fixed range (``[-c, c]``, or ``[0, c]`` asymmetric: a
            k-bit ReLU for activations) instead of the tensor's own range.
            Use it for activations, whose range should not depend on the
            batch.

    Example:
    >>> ks.quantizers.Uniform(bits=2)([[-1.0], [0.1], [0.6]])
    [[-1.], [0.], [1.]]
    """

    def __init__(self, bits=8, per_channel=True, symmetric=True, clip_value=None):
        self.bits = q_ops.check_bits(bits)
        if symmetric and bits < 2:
            raise ValueError(
                "Symmetric uniform quantization needs at least 2 bits; use "
                "'ste_sign' or symmetric=False. Received: bits=1"
            )
        for name, flag in (("per_channel", per_channel), ("symmetric", symmetric)):
            if not isinstance(flag, bool):
                raise ValueError(f"`{name}` must be a bool. Received: {name}={flag!r}")
        self.per_channel = per_channel
        self.symmetric = symmetric
        self.clip_value = _check_number(clip_value, "clip_value", allow_none=True)
        self.precision = self.bits
        self.keeps_zero = True
        self.elementwise = self.clip_value is not None

    def get_config(self):
        return {
            "bits": self.bits,
            "per_channel": self.per_channel,
            "symmetric": self.symmetric,
            "clip_value": self.clip_value,
        }

    def _axes(self, output_axes):
        if not self.per_channel:
            return ()
        return None if output_axes is None else tuple(output_axes)

    def side_values(self, shape, output_axes=None):
        if self.clip_value is not None:
            return 1
        count = _channels(shape, self._axes(output_axes))
        return count if self.symmetric else 2 * count

    def __call__(self, x, state=None, output_axes=None, training=None):
        return q_ops.uniform(
            x, self.bits, self.symmetric, self._axes(output_axes), self.clip_value
        )


@_register("dorefa")
class DoReFa(Quantizer):
    """DoReFa-Net k-bit quantizer (see :func:`keras_sparse.ops.quantize.dorefa`).

    Args:
        bits: bit width, 1-8.
        mode: ``"weights"`` (values in ``[-1, 1]`` through ``tanh``) or
            ``"activations"`` (values in ``[0, 1]``). Larq's ``DoReFa``
            defaults to activations; this one to weights, the common use of
            a ``kernel_quantizer``.

    Example:
    >>> ks.quantizers.DoReFa(bits=1, mode="activations")([0.2, 0.7])
    [0., 1.]
    """

    def __init__(self, bits=2, mode="weights"):
        self.bits = q_ops.check_bits(bits)
        if mode not in ("weights", "activations"):
            raise ValueError(
                f"`mode` must be 'weights' or 'activations'. Received: mode={mode!r}"
            )
        self.mode = mode
        self.precision = self.bits
        self.elementwise = mode == "activations"
        self.keeps_zero = mode == "activations"

    def get_config(self):
        return {"bits": self.bits, "mode": self.mode}

    def __call__(self, x, state=None, output_axes=None, training=None):
        return q_ops.dorefa(x, self.bits, self.mode)


@_register("lsq")
class LSQ(Quantizer):
    """Learned Step Size Quantization: a trainable step per tensor (see
    :func:`keras_sparse.ops.quantize.lsq`).

    The step is a scalar variable ``<name>_step`` of the layer. For weights
    it starts at ``2 mean|W| / sqrt(Q_P)`` (over kept entries when the layer
    is pruned); for activations at ``initial_step`` (default 1.0, or set
    it from data). The gradient scale uses ``N`` = entries of the weight, or
    features per example for activations.

    Args:
        bits: bit width (signed: 2-8, unsigned: 1-8).
        signed: levels ``-2^{b-1}..2^{b-1}-1`` (weights) or ``0..2^b-1``
            (activations after a ReLU).
        initial_step: fixed initial step (``None``: from the data, see
            above).

    Example:
    >>> ks.layers.SparseDense(64, kernel_quantizer=ks.quantizers.LSQ(bits=4))
    """

    def __init__(self, bits=4, signed=True, initial_step=None):
        if not isinstance(signed, bool):
            raise ValueError(f"`signed` must be a bool. Received: signed={signed!r}")
        self.bits = q_ops.check_bits(bits, low=2 if signed else 1)
        self.signed = signed
        self.initial_step = _check_number(initial_step, "initial_step", allow_none=True)
        self.precision = self.bits
        self.keeps_zero = True

    def get_config(self):
        return {"bits": self.bits, "signed": self.signed, "initial_step": self.initial_step}

    def _first_step(self, value, mask=None):
        """The initial step as a Python float, from a concrete ``value``.

        Plain numpy: a layer may be built inside a symbolic trace (a
        subclassed model's first call), where ``keras.ops`` give symbols.
        """
        if self.initial_step is not None or value is None:
            return self.initial_step or 1.0
        value = np.asarray(ops.convert_to_numpy(value), dtype="float64")
        if mask is not None:
            kept = value[np.asarray(ops.convert_to_numpy(mask)).astype(bool)]
            if kept.size:
                value = kept
        _, q_p = q_ops.lsq_levels(self.bits, self.signed)
        step = 2.0 * float(np.mean(np.abs(value))) / math.sqrt(q_p) if value.size else 0.0
        return step if step > 0 else 1.0

    def build(self, layer, shape, name, value=None):
        _, q_p = q_ops.lsq_levels(self.bits, self.signed)
        size = max(1, math.prod(int(d) for d in shape if d is not None))
        if self.initial_step is not None or value is None:
            initializer = keras.initializers.Constant(self.initial_step or 1.0)
        else:

            def initializer(shape, dtype=None):
                # keras.ops, not numpy: a subclassed model builds its layers
                # inside a trace, where the weights are still symbolic.
                step = q_ops.lsq_initial_step(value, self.bits, self.signed)
                return ops.cast(ops.reshape(step, shape), dtype or "float32")

        step = layer.add_weight(
            name=f"{name}_step", shape=(), initializer=initializer, trainable=True
        )
        return {"step": step, "grad_scale": 1.0 / math.sqrt(size * q_p)}

    def initialize(self, state, value, mask=None):
        if self.initial_step is None and "step" in state:
            state["step"].assign(self._first_step(value, mask))

    def calibrate(self, state, inputs):
        """The step from inputs: ``2 mean|x| / sqrt(Q_P)`` (also when
        ``initial_step`` is set: calibrating is an explicit request)."""
        if "step" not in state:
            return False
        _, q_p = q_ops.lsq_levels(self.bits, self.signed)
        mean = float(np.mean(np.abs(np.asarray(inputs, dtype="float64"))))
        step = 2.0 * mean / math.sqrt(q_p)
        state["step"].assign(step if step > 0 else 1.0)
        return True

    def side_values(self, shape, output_axes=None):
        return 1

    def __call__(self, x, state=None, output_axes=None, training=None):
        if state is None:
            if self.initial_step is not None:
                step = self.initial_step
            else:
                step = ops.stop_gradient(q_ops.lsq_initial_step(x, self.bits, self.signed))
            return q_ops.lsq(x, step, self.bits, self.signed)
        return q_ops.lsq(x, state["step"], self.bits, self.signed, state["grad_scale"])


# ------------------------------------------------------------ activations
@_register("ste_heaviside")
class SteHeaviside(Quantizer):
    """``{0, 1}`` activations (``1`` where ``x > 0``) with the
    straight-through estimator (see
    :func:`keras_sparse.ops.quantize.ste_heaviside`).

    Args:
        clip_value: the gradient passes where ``|x| <= clip_value``.

    Example:
    >>> ks.quantizers.SteHeaviside()([-0.5, 0.0, 2.0])
    [0., 0., 1.]
    """

    precision = 1
    keeps_zero = True

    def __init__(self, clip_value=1.0):
        self.clip_value = _check_number(clip_value, "clip_value", allow_none=True)

    def get_config(self):
        return {"clip_value": self.clip_value}

    def __call__(self, x, state=None, output_axes=None, training=None):
        return q_ops.ste_heaviside(x, self.clip_value)


@_register("pact")
class PACT(Quantizer):
    """k-bit ReLU with a learnable clip ``alpha`` (PACT; see
    :func:`keras_sparse.ops.quantize.pact`). Meant for ``input_quantizer``;
    the clip is a scalar variable ``<name>_clip`` of the layer. Add an L2
    penalty on it as in the paper if wanted.

    Args:
        bits: bit width, 1-8.
        initial_clip: initial ``alpha`` (the paper uses 10).

    Example:
    >>> ks.layers.SparseDense(64, input_quantizer=ks.quantizers.PACT(bits=4))
    """

    def __init__(self, bits=4, initial_clip=10.0):
        self.bits = q_ops.check_bits(bits)
        self.initial_clip = _check_number(initial_clip, "initial_clip")
        self.precision = self.bits
        self.keeps_zero = True

    def get_config(self):
        return {"bits": self.bits, "initial_clip": self.initial_clip}

    def build(self, layer, shape, name, value=None):
        clip = layer.add_weight(
            name=f"{name}_clip",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_clip),
            trainable=True,
        )
        return {"clip": clip}

    def side_values(self, shape, output_axes=None):
        return 1

    def __call__(self, x, state=None, output_axes=None, training=None):
        clip = self.initial_clip if state is None else state["clip"]
        return q_ops.pact(x, clip, self.bits)


# ---------------------------------------------------------------- lookup
def _parse(key):
    if key == "binary":
        return SteSign()
    if key == "ternary":
        return SteTern(ternary_weight_networks=True, scaled=True)
    return None


def get(identifier, arg_name="quantizer"):
    """Resolve a quantizer.

    Args:
        identifier: ``None``, a :class:`Quantizer`, an alias (``"ste_sign"``,
            ``"binary"``, ``"ternary"``, ...), an int number of bits (``1`` ->
            ``SteSign``, ``2``-``8`` -> ``Uniform(bits)``) or a serialized
            config dict.
        arg_name: the argument name used in error messages.

    Returns:
        A :class:`Quantizer` or ``None``.

    Raises:
        ValueError: naming ``arg_name`` and the value, for anything else.

    Example:
    >>> ks.quantizers.get(4)
    Uniform(bits=4, per_channel=True, symmetric=True, clip_value=None)
    """
    if identifier is None:
        return None
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        if identifier == 1:
            return SteSign()
        if 2 <= identifier <= 8:
            return Uniform(bits=identifier)
        raise ValueError(
            f"An integer `{arg_name}` is a number of bits in [1, 8]. "
            f"Received: {arg_name}={identifier!r}"
        )
    return config_lib.lookup(identifier, Quantizer, REGISTRY, arg_name, parse_string=_parse)


def serialize(quantizer):
    """Serialize a quantizer (or ``None``) for a layer config."""
    return config_lib.serialize(quantizer)
