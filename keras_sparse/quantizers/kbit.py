"""k-bit quantizers (uniform, DoReFa, LSQ) and the activation quantizers
(``{0, 1}`` steps, PACT)."""

import math

import keras
import numpy as np
from keras import ops

from keras_sparse.ops import quantize as q_ops
from keras_sparse.quantizers.base import Quantizer
from keras_sparse.quantizers.base import _channels
from keras_sparse.quantizers.base import _check_number
from keras_sparse.quantizers.base import _register

__all__ = ["Uniform", "DoReFa", "LSQ", "SteHeaviside", "PACT"]


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

    def export_codes(self, x, state=None, output_axes=None):
        return q_ops.uniform_codes(
            x, self.bits, self.symmetric, self._axes(output_axes), self.clip_value
        )

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

    Quantizing twice changes nothing, except for weights with 4 or more
    bits (see :func:`keras_sparse.ops.quantize.dorefa`).

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

    def export_codes(self, x, state=None, output_axes=None):
        return q_ops.dorefa_codes(x, self.bits, self.mode)

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

    With a fixed step (the layer's variable, or ``initial_step``) quantizing
    twice changes nothing. Called without state and without
    ``initial_step``, the step is taken from each input, so a second call
    on the quantized tensor may use another step.

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

    def _step(self, x, state):
        if state is not None:
            return state["step"]
        if self.initial_step is not None:
            return self.initial_step
        return ops.stop_gradient(q_ops.lsq_initial_step(x, self.bits, self.signed))

    def export_codes(self, x, state=None, output_axes=None):
        return q_ops.lsq_codes(x, self._step(x, state or None), self.bits, self.signed)

    def __call__(self, x, state=None, output_axes=None, training=None):
        step = self._step(x, state)
        if state is None:
            return q_ops.lsq(x, step, self.bits, self.signed)
        return q_ops.lsq(x, step, self.bits, self.signed, state["grad_scale"])


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

    def export_codes(self, x, state=None, output_axes=None):
        return q_ops.ste_heaviside_codes(x)

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

    def export_codes(self, x, state=None, output_axes=None):
        clip = self.initial_clip if not state else state["clip"]
        return q_ops.pact_codes(x, clip, self.bits)

    def __call__(self, x, state=None, output_axes=None, training=None):
        clip = self.initial_clip if state is None else state["clip"]
        return q_ops.pact(x, clip, self.bits)
