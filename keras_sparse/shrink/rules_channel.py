"""Rules of the layers without units of their own, which map input channels
to output channels: channelwise layers (dropout, pooling, activations,
BatchNorm...), Flatten, and the merges (Concatenate, Add, Subtract, ...).
"""

import keras
import numpy as np

from keras_sparse.shrink.rules_base import Rule
from keras_sparse.shrink.rules_base import _apply
from keras_sparse.shrink.rules_base import _np
from keras_sparse.shrink.rules_base import plain_state

__all__ = ["AddRule", "ChannelwiseRule", "ConcatenateRule", "FlattenRule", "MergeRule"]


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
