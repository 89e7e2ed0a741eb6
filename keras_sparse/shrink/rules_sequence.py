"""Rules of Embedding (its output dimensions are units) and
MultiHeadAttention (whole heads are units).
"""

import keras
import numpy as np

from keras_sparse.shrink.rules_base import Rule
from keras_sparse.shrink.rules_base import _np
from keras_sparse.shrink.rules_base import plain_state

__all__ = ["AttentionRule", "EmbeddingRule"]


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
