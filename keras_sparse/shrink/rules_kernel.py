"""Rules of the layers that contract their input channels with a kernel:
Dense, ConvND, this package's LowRank layers and ColumnSampledDense, read
through one adapter per layer family.
"""

import math

import keras
import numpy as np

from keras_sparse.layers.base import SparseMixin
from keras_sparse.layers.low_rank import LowRankConv2D
from keras_sparse.layers.low_rank import LowRankDense
from keras_sparse.shrink.rules_base import Rule
from keras_sparse.shrink.rules_base import _apply
from keras_sparse.shrink.rules_base import _channels_last
from keras_sparse.shrink.rules_base import _is_elementwise
from keras_sparse.shrink.rules_base import _np
from keras_sparse.shrink.rules_base import activation_name
from keras_sparse.shrink.rules_base import plain_state

__all__ = ["KernelRule"]


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
    """The kernel view of a Dense or ConvND layer (sparse or plain, a
    subclass included), or ``None`` when the rule cannot serve it."""
    plain = layer._keras_parent if isinstance(layer, SparseMixin) else type(layer)
    conv_types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    transposed = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    if issubclass(plain, transposed) or issubclass(plain, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        return None
    # A subclass reaches here only when it keeps its parent's ``call``
    # (see ``rules.registered_rule``).
    if issubclass(plain, keras.layers.Dense):
        return _PlainKernel(layer)
    if issubclass(plain, conv_types):
        if getattr(layer, "groups", 1) != 1 or not _channels_last(layer):
            return None
        return _PlainKernel(layer)
    return None


def column_sampled_adapter(layer):
    return _ColumnSampledKernel(layer)


def low_rank_adapter(layer):
    return _LowRankKernel(layer) if _channels_last(layer) else None


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
