"""Rules of DepthwiseConv1D/2D and SeparableConv1D/2D, whose input channel
``c`` feeds its own ``M`` depthwise channels only.
"""

import numpy as np

from keras_sparse.shrink.rules_base import Rule
from keras_sparse.shrink.rules_base import _apply
from keras_sparse.shrink.rules_base import _is_elementwise
from keras_sparse.shrink.rules_base import activation_name
from keras_sparse.shrink.rules_base import plain_state

__all__ = ["DepthwiseRule", "SeparableRule"]


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
