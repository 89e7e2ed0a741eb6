"""Per-layer-type rules of :func:`keras_sparse.shrink`.

Every node of the flat graph gets one rule. A rule answers four questions
about its layer, channel by channel (the last axis of every tensor):

1. ``consts``: which output channels are *constant* (the same value at every
   position of every example, e.g. a unit whose kernel column is all zero
   outputs ``act(bias)``), and their value, given which input channels are;
2. ``links``: which channels must be kept or removed together (a
   BatchNorm's channel ``c`` with its input's channel ``c``, every input of a
   residual ``Add``, a Flatten's features with their channel...);
3. ``pins`` and ``demand``: which channels must be kept (a layer the rules
   cannot shrink keeps all its inputs and outputs; a kept unit keeps every
   non-constant input it reads with a non-zero weight);
4. ``rebuild``: build the smaller layer for the kept channels, absorbing
   what the removed ones contributed.

How removed channels stay exact: a removed channel is either never read
with a non-zero weight, or constant. A constant channel's contribution is
folded into the next layer's bias (``Dense``, ``valid`` or ``1x1``
convolutions: exact). A ``same``-padded convolution sees zero padding at the
borders, so a constant input is *not* constant after it; there one removed
constant channel of the tensor, the *carrier*, is kept, and the other
removed constant channels are folded into the carrier's kernel slice scaled
by ``value / carrier value`` (exact, since all are uniform images).
Removing a whole input of a residual ``Add`` (a pruned branch) leaves a
per-channel *offset*; offsets travel through linear layers (pooling,
flatten, add, concatenate) and are absorbed by the next layer with a bias
(Dense, convolution, BatchNorm's mean), folded into the producer of the
other ``Add`` input when that is a linear layer with a bias, or added back by
a ``keras.layers.Rescaling(1.0, offset=...)`` layer before anything
non-linear.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sparse.layers.base import SparseMixin
from keras_sparse.layers.column_sampled import ColumnSampledDense
from keras_sparse.layers.low_rank import LowRankConv2D
from keras_sparse.layers.low_rank import LowRankDense

__all__ = ["rule_for", "ELEMENTWISE_ACTIVATIONS"]

#: Activations applied entry by entry (a unit's output depends on its own
#: pre-activation only); the others (softmax, glu, ...) mix channels.
ELEMENTWISE_ACTIVATIONS = frozenset(
    "celu elu exponential gelu hard_shrink hard_sigmoid hard_silu hard_swish hard_tanh "
    "leaky_relu linear log_sigmoid mish relu relu6 selu sigmoid silu soft_shrink softplus "
    "softsign sparse_plus sparse_sigmoid squareplus swish tanh tanh_shrink threshold".split()
)


# ------------------------------------------------------------------ helpers
def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def activation_name(fn):
    if fn is None:
        return "linear"
    try:
        name = keras.activations.serialize(fn)
    except Exception:  # noqa: BLE001 - a user function Keras cannot name
        return None
    return name if isinstance(name, str) else None


def _is_elementwise(fn):
    return activation_name(fn) in ELEMENTWISE_ACTIVATIONS


def _apply(fn, values):
    """``fn`` on a float vector (constants), through Keras, as float64."""
    if fn is None or activation_name(fn) == "linear" or values.size == 0:
        return values
    out = fn(ops.convert_to_tensor(values.astype("float32")[None, :]))
    return _np(out)[0].astype("float64")


def plain_state(layer):
    """``(class, config, weights)`` of the plain Keras layer computing what
    ``layer`` computes in inference (sparse layers: effective weights)."""
    if isinstance(layer, SparseMixin):
        return layer._keras_parent, layer.plain_config(), [np.asarray(w) for w in layer.stripped_weights()]
    return type(layer), layer.get_config(), [_np(w) for w in layer.weights]


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _unsupported_sparse(layer):
    """Sparse layers with an input quantizer cannot become plain layers."""
    return isinstance(layer, SparseMixin) and getattr(layer, "input_quantizer", None) is not None


def _has_lora_or_quantization(layer):
    if getattr(layer, "lora_enabled", False):
        return True
    policy = getattr(layer, "dtype_policy", None)
    return getattr(policy, "quantization_mode", None) is not None


# -------------------------------------------------------------------- rules
class Rule:
    """Base rule: nothing is linked, pinned or demanded; outputs are LIVE."""

    #: whether the rule lets offsets of its inputs through linearly
    passes_offsets = False
    #: set by ``rebuild`` when the layer was replaced by its only input
    became_identity = False

    def __init__(self, node, graph):
        self.node = node
        self.graph = graph
        self.layer = node.layer

    @property
    def in_key(self):
        return self.node.inputs[0]

    @property
    def out_key(self):
        return self.node.outputs[0]

    def consts(self, ctx):
        for key in self.node.outputs:
            ctx.set_live(key)

    def links(self, ctx):
        pass

    def pins(self, ctx):
        pass

    def demand(self, ctx):
        pass

    def can_take_extra_bias(self):
        return False

    def describe(self):
        return type(self.layer).__name__

    def units(self):
        """Number of units/channels this layer owns (for the summary)."""
        return None

    def pruned_units(self):
        """Boolean mask of the output channels whose weights are all zero
        (pruned units), or ``None`` for layers without units."""
        return None

    def rebuild(self, ctx):
        raise NotImplementedError


class BarrierRule(Rule):
    """A layer the rules do not shrink: keeps every input and output channel;
    rebuilt as a copy (plain Keras class for sparse layers)."""

    def __init__(self, node, graph, reason=""):
        super().__init__(node, graph)
        self.reason = reason

    def pins(self, ctx):
        for key in self.node.inputs + self.node.outputs:
            ctx.pin(key)

    def rebuild(self, ctx):
        layer = self.layer
        if isinstance(layer, keras.layers.Layer) and not _unsupported_sparse(layer):
            cls, config, weights = plain_state(layer)
        elif isinstance(layer, keras.layers.Layer):
            cls, config, weights = type(layer), layer.get_config(), [_np(w) for w in layer.weights]
        else:  # a raw keras.ops operation: stateless, reuse it
            cls = config = weights = None
        args, kwargs = ctx.fill_args(self.node)
        outputs = ctx.call_layer(self.node, cls, config, weights, args, kwargs)
        for key, tensor in zip(self.node.outputs, keras.tree.flatten(outputs)):
            ctx.set_output(key, tensor)


# ----------------------------------------------------------- kernel layers
class _KernelAdapter:
    """Uniform access to a layer that contracts its input channels with a
    kernel: ``taps`` ``(T, in, out)`` (T spatial taps, 1 for Dense), bias,
    activation, and how to make the smaller layer."""

    def __init__(self, layer):
        self.layer = layer

    uniform = True  # a uniform input gives a uniform output

    def new_layer(self, kept_in, kept_out, folds, bias):
        raise NotImplementedError


class _PlainKernel(_KernelAdapter):
    """Dense / ConvND (and their sparse versions): weights [kernel, bias?]."""

    def __init__(self, layer):
        super().__init__(layer)
        self.cls, self.config, weights = plain_state(layer)
        self.kernel = weights[0].astype("float64")
        self.bias = weights[1].astype("float64") if self.config.get("use_bias", True) and len(weights) > 1 else None
        self.activation = layer.activation
        shape = self.kernel.shape
        self.taps = self.kernel.reshape((-1,) + shape[-2:])
        self.is_conv = len(shape) > 2
        if self.is_conv:
            kernel_size = tuple(self.config.get("kernel_size", shape[:-2]))
            padding = self.config.get("padding", "valid")
            self.uniform = padding == "valid" or all(k == 1 for k in kernel_size)

    def new_layer(self, kept_in, kept_out, folds, bias):
        kernel = self.kernel[..., kept_in, :][..., kept_out].copy()
        for position, channel, ratio in folds:
            kernel[..., position, :] += ratio * self.kernel[..., channel, kept_out]
        config = dict(self.config)
        config["units" if "units" in config else "filters"] = len(kept_out)
        use_bias = bool(self.config.get("use_bias", True)) or bool(np.any(bias != 0))
        config["use_bias"] = use_bias
        weights = [kernel.astype("float32")] + ([bias.astype("float32")] if use_bias else [])
        return self.cls, config, weights


class _ColumnSampledKernel(_KernelAdapter):
    """ColumnSampledDense becomes a plain Dense over the kept features."""

    def __init__(self, layer):
        super().__init__(layer)
        self.kernel = layer.full_kernel().astype("float64")
        self.taps = self.kernel[None]
        self.bias = _np(layer.bias).astype("float64") if layer.bias is not None else None
        self.activation = layer.activation

    def new_layer(self, kept_in, kept_out, folds, bias):
        layer = self.layer
        config = {
            "name": layer.name,
            "units": len(kept_out),
            "activation": keras.activations.serialize(layer.activation),
            "use_bias": True,
            "dtype": layer.dtype_policy,
        }
        kernel = self.kernel[kept_in][:, kept_out]
        return keras.layers.Dense, config, [kernel.astype("float32"), bias.astype("float32")]


class _LowRankKernel(_KernelAdapter):
    """LowRankDense / LowRankConv2D: slice the factors (quantized values are
    stored; the rebuilt layer has no quantizer)."""

    def __init__(self, layer):
        super().__init__(layer)
        self.a = _np(layer.factor("kernel_a")).astype("float64")
        self.b = _np(layer.factor("kernel_b")).astype("float64")
        self.bias = _np(layer.bias).astype("float64") if layer.bias is not None else None
        self.activation = layer.activation
        full = self.a.reshape(-1, self.a.shape[-1]) @ self.b
        self.kernel = full.reshape(self.a.shape[:-1] + (self.b.shape[-1],))
        self.taps = self.kernel.reshape((-1,) + self.kernel.shape[-2:])
        if isinstance(layer, LowRankConv2D):
            self.uniform = layer.padding == "valid" or all(k == 1 for k in layer.kernel_size)

    def new_layer(self, kept_in, kept_out, folds, bias):
        a = self.a[..., kept_in, :].copy()
        for position, channel, ratio in folds:
            a[..., position, :] += ratio * self.a[..., channel, :]
        b = self.b[:, kept_out]
        rank = a.shape[-1]
        if rank >= min(math.prod(a.shape[:-1]), len(kept_out)):
            return self._full_layer(a, b, kept_out, bias)
        config = self.layer.get_config()
        config["units" if "units" in config else "filters"] = len(kept_out)
        config["kernel_quantizer"] = None
        config["use_bias"] = True
        return type(self.layer), config, [a.astype("float32"), b.astype("float32"), bias.astype("float32")]

    def _full_layer(self, a, b, kept_out, bias):
        """The shrunk factors no longer save anything: one plain layer."""
        layer = self.layer
        kernel = (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (len(kept_out),))
        config = {
            "name": layer.name,
            "activation": keras.activations.serialize(layer.activation),
            "use_bias": True,
            "dtype": layer.dtype_policy,
        }
        if isinstance(layer, LowRankDense):
            config["units"] = len(kept_out)
            cls = keras.layers.Dense
        else:
            cls = keras.layers.Conv2D
            config.update(filters=len(kept_out), kernel_size=layer.kernel_size, strides=layer.strides,
                          padding=layer.padding, data_format=layer.data_format,
                          dilation_rate=layer.dilation_rate)
        return cls, config, [kernel.astype("float32"), bias.astype("float32")]


def _kernel_adapter(layer):
    if isinstance(layer, ColumnSampledDense):
        return _ColumnSampledKernel(layer)
    if isinstance(layer, (LowRankDense, LowRankConv2D)):
        if not _channels_last(layer):
            return None
        return _LowRankKernel(layer)
    plain = layer._keras_parent if isinstance(layer, SparseMixin) else type(layer)
    conv_types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    transposed = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    if issubclass(plain, transposed) or issubclass(plain, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        return None
    if issubclass(plain, keras.layers.Dense):
        if plain is not keras.layers.Dense and not isinstance(layer, SparseMixin):
            return None  # a user subclass of Dense may compute something else
        return _PlainKernel(layer)
    if issubclass(plain, conv_types) and plain in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
        if getattr(layer, "groups", 1) != 1 or not _channels_last(layer):
            return None
        return _PlainKernel(layer)
    return None


class KernelRule(Rule):
    """Dense, ConvND, LowRank*, ColumnSampledDense: output units are
    removed when nothing needs them; input channels that are constant are
    absorbed into the bias (or a carrier), unused ones dropped."""

    def __init__(self, node, graph, adapter):
        super().__init__(node, graph)
        self.adapter = adapter
        self.nonzero = np.any(adapter.taps != 0, axis=0)  # (in, out)
        self.tap_sum = adapter.taps.sum(axis=0)
        self.bias = adapter.bias if adapter.bias is not None else np.zeros(adapter.taps.shape[-1])
        self.elementwise = _is_elementwise(adapter.activation)

    def units(self):
        return self.adapter.taps.shape[-1]

    def pruned_units(self):
        return ~self.nonzero.any(axis=0)

    def describe(self):
        return type(self.layer).__name__

    def consts(self, ctx):
        const_in = ctx.const[self.in_key]
        if not self.elementwise:
            ctx.set_live(self.out_key)
            return
        live = np.isnan(const_in)
        reads_live = self.nonzero[live].any(axis=0)
        values = np.where(live, 0.0, const_in)
        if not self.adapter.uniform:
            reads_live |= self.nonzero[~live & (values != 0)].any(axis=0)
        pre = self.bias + values @ self.tap_sum
        out = np.where(reads_live, np.nan, _apply(self.adapter.activation, pre))
        out[reads_live] = np.nan
        ctx.set_const(self.out_key, out)

    def pins(self, ctx):
        if not self.elementwise:
            ctx.pin(self.out_key)

    def _absorbable(self, ctx):
        """Constant input channels this layer can fold into its bias. A
        shared layer must fold the same values at every call."""
        const_in = ctx.const[self.in_key]
        same = ~np.isnan(const_in)
        if self.node.shared:
            for other in ctx.graph.nodes:
                if other.layer is self.layer and other is not self.node:
                    same &= ctx.const[other.inputs[0]] == const_in
        return same

    def demand(self, ctx):
        kept_out = ctx.keep_mask(self.out_key)
        if not kept_out.any():
            return
        need = self.nonzero[:, kept_out].any(axis=1)
        const_in = ctx.const[self.in_key]
        absorbable = self._absorbable(ctx)
        if self.adapter.uniform:
            ctx.mark(self.in_key, need & ~absorbable)
        else:
            zero = absorbable & (np.nan_to_num(const_in) == 0)
            if self.node.shared:
                ctx.mark(self.in_key, need & ~zero)
            else:
                ctx.mark(self.in_key, need & np.isnan(const_in))
                if (need & ~np.isnan(const_in) & ~zero).any():
                    ctx.need_carrier(self.in_key)
        if not ctx.keep_mask(self.in_key).any():
            # A layer with outputs needs at least one input channel.
            ctx.mark(self.in_key, np.arange(len(need)) == int(np.argmax(need)))

    def can_take_extra_bias(self):
        return (
            not self.node.shared
            and activation_name(self.adapter.activation) == "linear"
        )

    def rebuild(self, ctx):
        kept_in = ctx.kept(self.in_key)
        kept_out = ctx.kept(self.out_key)
        if self.node.shared or not self.adapter.uniform:
            source = ctx.materialize(self.in_key)
            offset = np.zeros(len(ctx.const[self.in_key]))
        else:
            source = ctx.tensor(self.in_key)
            offset = ctx.offset(self.in_key)
        const_in = ctx.const[self.in_key]
        removed = np.setdiff1d(np.arange(len(const_in)), kept_in)
        values = np.nan_to_num(const_in, nan=0.0)
        bias = self.bias[kept_out].copy()
        folds = []
        if removed.size:
            used = self.nonzero[removed][:, kept_out].any(axis=1)
            live_used = used & np.isnan(const_in[removed])
            if live_used.any():
                raise RuntimeError(
                    f"shrink: layer {self.layer.name!r} reads removed non-constant channels "
                    f"{removed[live_used].tolist()} (internal error)."
                )
            if self.adapter.uniform:
                bias += values[removed] @ self.tap_sum[removed][:, kept_out]
            else:
                stuck = removed[used & (values[removed] != 0)]
                if stuck.size:
                    carrier = ctx.carrier.get(self.in_key)
                    if carrier is None or carrier not in kept_in:
                        raise RuntimeError(
                            f"shrink: layer {self.layer.name!r} has no carrier channel (internal error)."
                        )
                    position = int(np.searchsorted(kept_in, carrier))
                    folds = [(position, int(c), values[c] / values[carrier]) for c in stuck]
        if np.any(offset[kept_in] != 0):
            bias += offset[kept_in] @ self.tap_sum[kept_in][:, kept_out]
        extra = ctx.extra_bias.get(self.node.index)
        if extra is not None:
            bias += extra[kept_out]
        cls, config, weights = self.adapter.new_layer(kept_in, kept_out, folds, bias)
        args, kwargs = ctx.fill_args(self.node, replace={self.in_key: source})
        output = ctx.call_layer(self.node, cls, config, weights, args, kwargs)
        ctx.set_output(self.out_key, output)


# ----------------------------------------------------------- depthwise
class DepthwiseRule(Rule):
    """DepthwiseConv1D/2D: output channel ``c * M + m`` reads input channel
    ``c`` only, so input and output channels are kept together."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.cls, self.config, weights = plain_state(self.layer)
        self.kernel = weights[0].astype("float64")  # (*k, C, M)
        self.use_bias = bool(self.config.get("use_bias", True))
        self.channels, self.multiplier = self.kernel.shape[-2:]
        self.bias = weights[1].astype("float64") if self.use_bias else np.zeros(self.channels * self.multiplier)
        kernel_size = self.kernel.shape[:-2]
        self.uniform = self.config.get("padding", "valid") == "valid" or all(k == 1 for k in kernel_size)
        spatial = tuple(range(self.kernel.ndim - 2))
        self.nonzero = np.any(self.kernel != 0, axis=spatial)  # (C, M)
        self.tap_sum = self.kernel.sum(axis=spatial)  # (C, M)
        self.activation = self.layer.activation
        self.absorbs = not node.shared

    def units(self):
        return self.channels * self.multiplier

    def pruned_units(self):
        return ~self.nonzero.reshape(-1)

    def consts(self, ctx):
        if not _is_elementwise(self.activation):
            ctx.set_live(self.out_key)
            return
        const_in = ctx.const[self.in_key]
        live = np.isnan(const_in)[:, None] & self.nonzero
        values = np.nan_to_num(const_in)[:, None]
        if not self.uniform:
            live |= (values != 0) & self.nonzero
        pre = self.bias.reshape(self.channels, self.multiplier) + values * self.tap_sum
        out = _apply(self.activation, pre.reshape(-1))
        out[live.reshape(-1)] = np.nan
        ctx.set_const(self.out_key, out)

    def pins(self, ctx):
        if not _is_elementwise(self.activation):
            ctx.pin(self.out_key)
            ctx.pin(self.in_key)

    def links(self, ctx):
        for m in range(self.multiplier):
            ctx.link(self.in_key, np.arange(self.channels), self.out_key,
                     np.arange(self.channels) * self.multiplier + m)

    def can_take_extra_bias(self):
        return self.absorbs and activation_name(self.activation) == "linear"

    def rebuild(self, ctx):
        kept = ctx.kept(self.in_key)
        if self.uniform and self.absorbs:
            source, offset = ctx.tensor(self.in_key), ctx.offset(self.in_key)
        else:
            source, offset = ctx.materialize(self.in_key), np.zeros(self.channels)
        bias = self.bias.reshape(self.channels, self.multiplier)[kept].copy()
        bias += offset[kept][:, None] * self.tap_sum[kept]
        extra = ctx.extra_bias.get(self.node.index)
        if extra is not None:
            bias += extra.reshape(self.channels, self.multiplier)[kept]
        config = dict(self.config)
        use_bias = self.use_bias or bool(np.any(bias != 0))
        config["use_bias"] = use_bias
        weights = [self.kernel[..., kept, :].astype("float32")]
        if use_bias:
            weights.append(bias.reshape(-1).astype("float32"))
        args, kwargs = ctx.fill_args(self.node, replace={self.in_key: source})
        ctx.set_output(self.out_key, ctx.call_layer(self.node, self.cls, config, weights, args, kwargs))


class SeparableRule(Rule):
    """SeparableConv1D/2D: a depthwise step (input channel ``c`` to
    intermediate channels ``c*M..c*M+M-1``, no bias) and a pointwise ``1x1``
    step to the outputs (bias, activation)."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.cls, self.config, weights = plain_state(self.layer)
        self.depthwise = weights[0].astype("float64")  # (*k, C, M)
        self.pointwise = weights[1].astype("float64")  # (*1, C*M, F)
        self.use_bias = bool(self.config.get("use_bias", True))
        self.channels, self.multiplier = self.depthwise.shape[-2:]
        self.filters = self.pointwise.shape[-1]
        self.bias = weights[2].astype("float64") if self.use_bias else np.zeros(self.filters)
        kernel_size = self.depthwise.shape[:-2]
        self.uniform = self.config.get("padding", "valid") == "valid" or all(k == 1 for k in kernel_size)
        spatial = tuple(range(self.depthwise.ndim - 2))
        self.dw_nonzero = np.any(self.depthwise != 0, axis=spatial).reshape(-1)  # (C*M,)
        self.dw_sum = self.depthwise.sum(axis=spatial).reshape(-1)
        self.pw = self.pointwise.reshape(-1, self.filters)  # (C*M, F)
        self.activation = self.layer.activation
        self.absorbs = not node.shared

    def units(self):
        return self.filters

    def pruned_units(self):
        return ~(self.pw != 0).any(axis=0)

    def _intermediate(self, const_in):
        """(live mask, constant values) of the depthwise outputs."""
        c_in = np.repeat(const_in, self.multiplier)
        live_in = np.isnan(c_in)
        values = np.nan_to_num(c_in)
        live = self.dw_nonzero & (live_in | ((values != 0) & (not self.uniform)))
        return live, values * self.dw_sum

    def consts(self, ctx):
        if not _is_elementwise(self.activation):
            ctx.set_live(self.out_key)
            return
        live, values = self._intermediate(ctx.const[self.in_key])
        reads_live = (self.pw[live] != 0).any(axis=0)
        out = _apply(self.activation, self.bias + values @ self.pw)
        out[reads_live] = np.nan
        ctx.set_const(self.out_key, out)

    def pins(self, ctx):
        if not _is_elementwise(self.activation):
            ctx.pin(self.out_key)

    def demand(self, ctx):
        kept_out = ctx.keep_mask(self.out_key)
        if not kept_out.any():
            return
        used = (self.pw[:, kept_out] != 0).any(axis=1)
        if self.absorbs:
            live, _ = self._intermediate(ctx.const[self.in_key])
            used &= live
        need = used.reshape(self.channels, self.multiplier).any(axis=1)
        ctx.mark(self.in_key, need)
        if not ctx.keep_mask(self.in_key).any():
            ctx.mark(self.in_key, np.arange(self.channels) == 0)

    def can_take_extra_bias(self):
        return self.absorbs and activation_name(self.activation) == "linear"

    def rebuild(self, ctx):
        kept_in = ctx.kept(self.in_key)
        kept_out = ctx.kept(self.out_key)
        if self.uniform and self.absorbs:
            source, offset = ctx.tensor(self.in_key), ctx.offset(self.in_key)
        else:
            source, offset = ctx.materialize(self.in_key), np.zeros(self.channels)
        rows = (kept_in[:, None] * self.multiplier + np.arange(self.multiplier)).reshape(-1)
        removed = np.setdiff1d(np.arange(self.channels * self.multiplier), rows)
        _, inter_values = self._intermediate(ctx.const[self.in_key])
        bias = self.bias[kept_out].copy()
        if self.absorbs and removed.size:
            bias += inter_values[removed] @ self.pw[removed][:, kept_out]
        shifted = np.repeat(offset, self.multiplier) * self.dw_sum
        bias += shifted[rows] @ self.pw[rows][:, kept_out]
        extra = ctx.extra_bias.get(self.node.index)
        if extra is not None:
            bias += extra[kept_out]
        config = dict(self.config)
        config["filters"] = len(kept_out)
        use_bias = self.use_bias or bool(np.any(bias != 0))
        config["use_bias"] = use_bias
        pointwise = self.pointwise[..., rows, :][..., kept_out]
        weights = [self.depthwise[..., kept_in, :].astype("float32"), pointwise.astype("float32")]
        if use_bias:
            weights.append(bias.astype("float32"))
        args, kwargs = ctx.fill_args(self.node, replace={self.in_key: source})
        ctx.set_output(self.out_key, ctx.call_layer(self.node, self.cls, config, weights, args, kwargs))


# ------------------------------------------------------ channelwise layers
class ChannelwiseRule(Rule):
    """A layer acting on each channel separately, with the same channel
    count in and out: dropout, pooling, global pooling, activations,
    BatchNorm, up-sampling, cropping, zero padding, Reshape that keeps the
    last axis.

    ``kind`` is ``"shift"`` (``f(x + o) = f(x) + o``: offsets pass),
    ``"nonlinear"`` (offsets are added back first), ``"pad"`` (zero padding:
    only zero constants stay constant), ``"batchnorm"`` or ``"rescaling"``.
    """

    def __init__(self, node, graph, kind, fn=None):
        super().__init__(node, graph)
        self.kind = kind
        self.fn = fn
        self.passes_offsets = kind in ("shift", "batchnorm", "rescaling") and not node.shared
        if kind == "batchnorm":
            self._read_batchnorm()
        if kind == "rescaling":
            self.scale = np.asarray(self.layer.scale, dtype="float64")
            self.offset_value = np.asarray(self.layer.offset, dtype="float64")

    def _read_batchnorm(self):
        layer = self.layer
        c = int(layer.moving_mean.shape[0])
        self.gamma = _np(layer.gamma).astype("float64") if layer.scale else np.ones(c)
        self.beta = _np(layer.beta).astype("float64") if layer.center else np.zeros(c)
        self.mean = _np(layer.moving_mean).astype("float64")
        self.var = _np(layer.moving_variance).astype("float64")
        self.inv = self.gamma / np.sqrt(self.var + layer.epsilon)

    def consts(self, ctx):
        const_in = ctx.const[self.in_key]
        if self.kind == "shift":
            out = const_in.copy()
        elif self.kind == "pad":
            out = np.where(const_in == 0, 0.0, np.nan)
        elif self.kind == "batchnorm":
            out = (const_in - self.mean) * self.inv + self.beta
        elif self.kind == "rescaling":
            out = const_in * self.scale + self.offset_value
        else:
            live = np.isnan(const_in)
            out = _apply(self.fn, np.nan_to_num(const_in))
            out[live] = np.nan
        ctx.set_const(self.out_key, out)

    def links(self, ctx):
        n = ctx.channels(self.in_key)
        ctx.link(self.in_key, np.arange(n), self.out_key, np.arange(n))

    def can_take_extra_bias(self):
        return self.kind == "batchnorm" and self.layer.center and not self.node.shared

    def rebuild(self, ctx):
        kept = ctx.kept(self.in_key)
        if self.passes_offsets:
            source, offset = ctx.tensor(self.in_key), ctx.offset(self.in_key)
        else:
            source, offset = ctx.materialize(self.in_key), None
        cls, config, weights = plain_state(self.layer)
        out_offset = None
        if self.kind == "batchnorm":
            weights = self._batchnorm_weights(kept, offset, ctx)
        elif self.kind == "rescaling":
            config = dict(config)
            for key, value in (("scale", self.scale), ("offset", self.offset_value)):
                if value.ndim:
                    config[key] = value[..., kept].tolist()
            out_offset = offset * self.scale if offset is not None else None
        elif self.kind == "shift":
            out_offset = offset
        if isinstance(self.layer, keras.layers.Reshape):
            config = dict(config)
            config["target_shape"] = tuple(config["target_shape"][:-1]) + (len(kept),)
        args, kwargs = ctx.fill_args(self.node, replace={self.in_key: source})
        output = ctx.call_layer(self.node, cls, config, weights, args, kwargs)
        ctx.set_output(self.out_key, output, out_offset)

    def _batchnorm_weights(self, kept, offset, ctx):
        layer = self.layer
        mean = self.mean.copy()
        if offset is not None:
            mean -= offset
        beta = self.beta.copy()
        extra = ctx.extra_bias.get(self.node.index)
        if extra is not None:
            beta += extra
        weights = []
        if layer.scale:
            weights.append(self.gamma[kept])
        if layer.center:
            weights.append(beta[kept])
        weights += [mean[kept], self.var[kept]]
        return [w.astype("float32") for w in weights]


class FlattenRule(Rule):
    """Flatten (or a Reshape to one axis) of a channels-last tensor: output
    feature ``p * C + c`` is channel ``c`` at position ``p``; removing a
    channel removes all its features, in the same order."""

    passes_offsets = True

    def consts(self, ctx):
        const_in = ctx.const[self.in_key]
        positions = ctx.channels(self.out_key) // len(const_in)
        ctx.set_const(self.out_key, np.tile(const_in, positions))

    def links(self, ctx):
        n = ctx.channels(self.in_key)
        positions = ctx.channels(self.out_key) // n
        for p in range(positions):
            ctx.link(self.in_key, np.arange(n), self.out_key, p * n + np.arange(n))

    def rebuild(self, ctx):
        kept = ctx.kept(self.in_key)
        n = ctx.channels(self.in_key)
        positions = ctx.channels(self.out_key) // n
        cls, config, weights = plain_state(self.layer)
        if isinstance(self.layer, keras.layers.Reshape):
            config = dict(config)
            config["target_shape"] = (positions * len(kept),)
        args, kwargs = ctx.fill_args(self.node, replace={self.in_key: ctx.tensor(self.in_key)})
        output = ctx.call_layer(self.node, cls, config, weights, args, kwargs)
        ctx.set_output(self.out_key, output, np.tile(ctx.offset(self.in_key), positions))


# ------------------------------------------------------------ merge layers
class ConcatenateRule(Rule):
    """Concatenate on the channel axis: input ``k``'s channel ``c`` is output
    channel ``offset_k + c``."""

    passes_offsets = True

    def _starts(self, ctx):
        sizes = [ctx.channels(k) for k in self.node.inputs]
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int), sizes

    def consts(self, ctx):
        ctx.set_const(self.out_key, np.concatenate([ctx.const[k] for k in self.node.inputs]))

    def links(self, ctx):
        starts, sizes = self._starts(ctx)
        for key, start, size in zip(self.node.inputs, starts, sizes):
            ctx.link(key, np.arange(size), self.out_key, start + np.arange(size))

    def rebuild(self, ctx):
        parts = [k for k in self.node.inputs if len(ctx.kept(k))]
        offset = np.concatenate([ctx.offset(k) for k in self.node.inputs])
        if len(parts) == 1:
            self.became_identity = True
            ctx.set_output(self.out_key, ctx.tensor(parts[0]), offset)
            return
        cls, config, weights = plain_state(self.layer)
        tensors = [ctx.tensor(k) for k in parts]
        output = ctx.call_layer(self.node, cls, config, weights, [tensors], {})
        ctx.set_output(self.out_key, output, offset)


class AddRule(Rule):
    """Add: every input keeps the same channels (the union of what is
    needed); an input that is constant everywhere (a pruned residual
    branch) is dropped and its value becomes an offset."""

    passes_offsets = True

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.dropped = []

    def consts(self, ctx):
        consts = [ctx.const[k] for k in self.node.inputs]
        fully = [not np.isnan(c).any() for c in consts]
        if not all(fully):
            self.dropped = [k for k, f in zip(self.node.inputs, fully) if f]
        total = np.sum(consts, axis=0)  # nan where any input is live
        ctx.set_const(self.out_key, total)

    @property
    def remaining(self):
        return [k for k in self.node.inputs if k not in self.dropped]

    def dropped_offset(self, ctx):
        if not self.dropped:
            return None
        return np.sum([ctx.const[k] for k in self.dropped], axis=0)

    def links(self, ctx):
        n = ctx.channels(self.out_key)
        for key in self.remaining:
            ctx.link(key, np.arange(n), self.out_key, np.arange(n))

    def rebuild(self, ctx):
        remaining = self.remaining
        offset = np.sum([ctx.offset(k) for k in remaining], axis=0)
        if self.dropped and self.node.index not in ctx.offset_absorbed:
            offset = offset + self.dropped_offset(ctx)
        if len(remaining) == 1:
            self.became_identity = True
            ctx.set_output(self.out_key, ctx.tensor(remaining[0]), offset)
            return
        cls, config, weights = plain_state(self.layer)
        output = ctx.call_layer(self.node, cls, config, weights,
                                [[ctx.tensor(k) for k in remaining]], {})
        ctx.set_output(self.out_key, output, offset)


class MergeRule(Rule):
    """Subtract, Average, Multiply, Maximum, Minimum: channel ``c`` of every
    input makes channel ``c`` of the output."""

    _NUMPY = {
        "Subtract": lambda xs: xs[0] - xs[1],
        "Average": lambda xs: np.mean(xs, axis=0),
        "Multiply": lambda xs: np.prod(xs, axis=0),
        "Maximum": lambda xs: np.max(xs, axis=0),
        "Minimum": lambda xs: np.min(xs, axis=0),
    }

    def __init__(self, node, graph, op_name):
        super().__init__(node, graph)
        self.op_name = op_name
        self.passes_offsets = op_name in ("Subtract", "Average")

    def consts(self, ctx):
        consts = np.stack([ctx.const[k] for k in self.node.inputs])
        ctx.set_const(self.out_key, self._NUMPY[self.op_name](consts))

    def links(self, ctx):
        n = ctx.channels(self.out_key)
        for key in self.node.inputs:
            ctx.link(key, np.arange(n), self.out_key, np.arange(n))

    def rebuild(self, ctx):
        if self.passes_offsets:
            tensors = [ctx.tensor(k) for k in self.node.inputs]
            offset = self._NUMPY[self.op_name](np.stack([ctx.offset(k) for k in self.node.inputs]))
        else:
            tensors = [ctx.materialize(k) for k in self.node.inputs]
            offset = None
        cls, config, weights = plain_state(self.layer)
        output = ctx.call_layer(self.node, cls, config, weights, [tensors], {})
        ctx.set_output(self.out_key, output, offset)


# -------------------------------------------------------------- embedding
class EmbeddingRule(Rule):
    """Embedding: its output dimensions are units (a pruned dimension is the
    constant 0)."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.cls, self.config, weights = plain_state(self.layer)
        self.table = weights[0]

    def units(self):
        return self.table.shape[1]

    def pruned_units(self):
        return ~np.any(self.table != 0, axis=0)

    def consts(self, ctx):
        zero = ~np.any(self.table != 0, axis=0)
        ctx.set_const(self.out_key, np.where(zero, 0.0, np.nan))

    def pins(self, ctx):
        ctx.pin(self.in_key)

    def rebuild(self, ctx):
        kept = ctx.kept(self.out_key)
        config = dict(self.config)
        config["output_dim"] = len(kept)
        args, kwargs = ctx.fill_args(self.node)
        output = ctx.call_layer(self.node, self.cls, config, [self.table[:, kept]], args, kwargs)
        ctx.set_output(self.out_key, output)


# -------------------------------------------------------------- attention
class AttentionRule(Rule):
    """MultiHeadAttention: whole heads are removed (a head is pruned when
    :class:`~keras_sparse.layers.HeadMaskedMultiHeadAttention` masks it, or
    when its slice of the output projection is all zero). Input and output
    channels are kept; with every head pruned the output is the output
    bias, a constant."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        layer = self.layer
        self.num_heads = layer.num_heads
        output_kernel = _np(layer._output_dense.kernel)
        alive = np.any(output_kernel.reshape(self.num_heads, -1) != 0, axis=1)
        mask = getattr(layer, "head_mask", None)
        if mask is not None:
            alive &= _np(mask).astype(bool)
        if len(node.outputs) > 1:  # attention scores are returned: keep every head
            alive[:] = True
        self.heads = np.nonzero(alive)[0]
        bias = layer._output_dense.bias
        self.output_bias = _np(bias).astype("float64").reshape(-1) if bias is not None else None

    def units(self):
        return self.num_heads

    def kept_units(self):
        return len(self.heads)

    def consts(self, ctx):
        for key in self.node.outputs:
            ctx.set_live(key)
        if len(self.heads) == 0 and ctx.channels(self.out_key) is not None:
            bias = self.output_bias if self.output_bias is not None else np.zeros(ctx.channels(self.out_key))
            if bias.shape == (ctx.channels(self.out_key),):
                ctx.set_const(self.out_key, bias.copy())

    def pins(self, ctx):
        for key in self.node.inputs:
            ctx.pin(key)
        if len(self.heads):
            for key in self.node.outputs:
                ctx.pin(key)

    def rebuild(self, ctx):
        layer = self.layer
        heads = self.heads if len(self.heads) else np.array([0])
        config = keras.layers.MultiHeadAttention.get_config(layer)
        config["num_heads"] = len(heads)
        sublayers = [layer._query_dense, layer._key_dense, layer._value_dense]
        if getattr(layer, "_use_gate", False):
            sublayers.append(layer._gate_dense)
        new_parts = []
        for sub in sublayers:
            kernel = _np(sub.kernel)[:, heads]
            part = [kernel]
            if sub.bias is not None:
                part.append(_np(sub.bias)[heads])
            new_parts.append(part)
        out_kernel = _np(layer._output_dense.kernel)[heads].copy()
        if len(self.heads) == 0:
            out_kernel[:] = 0.0
        out_part = [out_kernel]
        if layer._output_dense.bias is not None:
            out_part.append(_np(layer._output_dense.bias))
        args, kwargs = ctx.fill_args(self.node)
        new = ctx.call_layer(self.node, keras.layers.MultiHeadAttention, config, None, args, kwargs,
                             finish=lambda new_layer: _set_attention_weights(new_layer, new_parts, out_part))
        for key, tensor in zip(self.node.outputs, keras.tree.flatten(new)):
            ctx.set_output(key, tensor)


def _set_attention_weights(layer, parts, out_part):
    subs = [layer._query_dense, layer._key_dense, layer._value_dense]
    if getattr(layer, "_use_gate", False):
        subs.append(layer._gate_dense)
    for sub, values in zip(subs, parts):
        sub.set_weights([v.astype("float32") for v in values])
    layer._output_dense.set_weights([v.astype("float32") for v in out_part])


# ------------------------------------------------------------ dispatching
_SHIFT_TYPES = tuple(
    getattr(keras.layers, name)
    for name in (
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
        "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
        "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
        "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
        "UpSampling1D", "UpSampling2D", "UpSampling3D", "Cropping1D", "Cropping2D", "Cropping3D",
        "RepeatVector",
    )
    if hasattr(keras.layers, name)
)
_PAD_TYPES = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)
_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)
_MERGES = {
    keras.layers.Subtract: "Subtract",
    keras.layers.Average: "Average",
    keras.layers.Multiply: "Multiply",
    keras.layers.Maximum: "Maximum",
    keras.layers.Minimum: "Minimum",
}


def _same_channels(graph, node):
    keys = node.inputs + node.outputs
    channels = [graph.tensors[k].channels for k in keys]
    return None not in channels and len(set(channels)) == 1


def _same_shapes(graph, node):
    shapes = [graph.tensors[k].shape[1:] for k in node.inputs + node.outputs]
    return len(set(shapes)) == 1


def rule_for(node, graph):
    """The rule of ``node`` (a :class:`BarrierRule` when nothing fits)."""
    layer = node.layer
    tensors = [graph.tensors[k] for k in node.inputs + node.outputs]
    if not isinstance(layer, keras.layers.Layer):
        return BarrierRule(node, graph, "operation")
    if _unsupported_sparse(layer) or _has_lora_or_quantization(layer):
        return BarrierRule(node, graph, "quantized input")
    if any(t.channels is None for t in tensors) and not isinstance(
        layer, (keras.layers.Embedding, keras.layers.MultiHeadAttention)
    ):
        return BarrierRule(node, graph, "no channel axis")
    single = len(node.inputs) == 1 and len(node.outputs) == 1
    kind = type(layer)
    if isinstance(layer, keras.layers.MultiHeadAttention) and type(layer).__name__ in (
        "MultiHeadAttention", "HeadMaskedMultiHeadAttention"
    ):
        if graph.tensors[node.outputs[0]].channels is None:
            return BarrierRule(node, graph, "no channel axis")
        return AttentionRule(node, graph)
    if single:
        adapter = _kernel_adapter(layer)
        if adapter is not None:
            return KernelRule(node, graph, adapter)
        plain = layer._keras_parent if isinstance(layer, SparseMixin) else kind
        if plain in (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D) and _channels_last(layer):
            return DepthwiseRule(node, graph)
        if plain in (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D) and _channels_last(layer):
            return SeparableRule(node, graph)
        if plain is keras.layers.Embedding:
            return EmbeddingRule(node, graph)
    if single and _same_channels(graph, node):
        if kind in _SHIFT_TYPES and _channels_last(layer):
            return ChannelwiseRule(node, graph, "shift")
        if kind in _PAD_TYPES and _channels_last(layer):
            return ChannelwiseRule(node, graph, "pad")
        if kind in _ACTIVATION_LAYERS or (
            kind is keras.layers.Activation and _is_elementwise(layer.activation)
        ):
            fn = layer.activation if kind is keras.layers.Activation else layer
            return ChannelwiseRule(node, graph, "nonlinear", fn)
        if kind is keras.layers.BatchNormalization and layer.axis in (-1, len(tensors[0].shape) - 1):
            return ChannelwiseRule(node, graph, "batchnorm")
        if kind is keras.layers.Rescaling and np.ndim(layer.scale) <= 1 and np.ndim(layer.offset) <= 1:
            return ChannelwiseRule(node, graph, "rescaling")
        if kind is keras.layers.Reshape and tensors[0].shape[-1] == tensors[1].shape[-1]:
            return ChannelwiseRule(node, graph, "shift")
    if single and kind in (keras.layers.Flatten, keras.layers.Reshape) and _channels_last(layer):
        in_t, out_t = tensors
        if len(out_t.shape) == 2 and out_t.channels % in_t.channels == 0 and (
            math.prod(in_t.shape[1:]) == out_t.channels
        ):
            return FlattenRule(node, graph)
    if kind is keras.layers.Concatenate and len(node.outputs) == 1:
        rank = len(tensors[0].shape)
        if layer.axis in (-1, rank - 1):
            return ConcatenateRule(node, graph)
    if kind is keras.layers.Add and len(node.outputs) == 1 and _same_shapes(graph, node):
        return AddRule(node, graph)
    if kind in _MERGES and len(node.outputs) == 1 and _same_shapes(graph, node):
        return MergeRule(node, graph, _MERGES[kind])
    return BarrierRule(node, graph, "unsupported layer")
