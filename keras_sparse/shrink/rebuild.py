"""Rebuild of :func:`keras_sparse.shrink`: the smaller functional model
made by the rules from an analysed graph, and its per-layer summary.
"""

import keras
import numpy as np
from keras import tree

from keras_sparse.shrink.rules_base import BarrierRule
from keras_sparse.shrink.rules_sequence import AttentionRule


def _input_name(keras_tensor):
    history = getattr(keras_tensor, "_keras_history", None)
    if history is not None and history.operation is not None:
        return history.operation.name
    return keras_tensor.name


def _rebuild(ctx, model, info):
    graph = ctx.graph
    ctx.info = info
    new_inputs = []
    for key, kt in zip(graph.input_keys, tree.flatten(model.inputs)):
        tensor = graph.tensors[key]
        name = ctx.unique_name(_input_name(kt))
        shape = tuple(tensor.shape[1:])
        if tensor.channels is not None:
            kept = ctx.kept(key)
            shape = shape[:-1] + (len(kept),)
            info.kept_inputs[name] = kept.tolist()
            dropped = np.setdiff1d(np.arange(tensor.channels), kept)
            if dropped.size:
                info.dropped_inputs[name] = dropped.tolist()
        new = keras.Input(shape=shape, batch_size=tensor.shape[0], dtype=tensor.dtype, name=name)
        new_inputs.append(new)
        ctx.set_output(key, new)
    removed = set()
    for node in graph.nodes:
        if all(len(ctx.kept(k)) == 0 for k in node.outputs):
            removed.add(node.index)
            for key in node.outputs:
                ctx.set_output(key, None)
            continue
        node.rule.rebuild(ctx)
    outputs = [ctx.materialize(key) for key in graph.output_keys]
    inputs = _pack(getattr(model, "_inputs_struct", None), new_inputs)
    outputs = _pack(getattr(model, "_outputs_struct", None), outputs)
    new_model = keras.Model(inputs, outputs, name=model.name)
    _summarize(ctx, removed, info)
    return new_model


def _pack(struct, flat):
    if struct is not None:
        try:
            return tree.pack_sequence_as(struct, flat)
        except (ValueError, TypeError):
            pass
    return flat[0] if len(flat) == 1 else flat


def _summarize(ctx, removed, info):
    seen = set()
    for node in ctx.graph.nodes:
        if id(node.layer) in seen:
            continue
        seen.add(id(node.layer))
        rule = node.rule
        before = rule.units()
        after = None
        if before is not None:
            if isinstance(rule, AttentionRule):
                after = len(rule.heads) if node.index not in removed else 0
            else:
                after = 0 if node.index in removed else int(len(ctx.kept(node.outputs[0])))
        if node.index in removed:
            status = "removed"
        elif rule.became_identity:
            status = "removed (identity)"
        elif isinstance(rule, BarrierRule):
            status = "kept whole"
        elif before is not None and after != before:
            status = "shrunk"
        else:
            status = "unchanged"
        if isinstance(rule, AttentionRule) and after == 0 and node.index not in removed:
            after = 1  # a head is kept (with a zero output projection) to make the bias
        info.layers.append(dict(name=node.layer.name, type=type(node.layer).__name__,
                                units_before=before, units_after=after, status=status))
    info.carriers = len(ctx.carrier)
    carrier_roots = {
        int(ctx.roots[ctx.base[key] + channel]) for key, channel in ctx.carrier.items()
    }
    for node in ctx.graph.nodes:
        pruned = node.rule.pruned_units()
        if pruned is None or node.index in removed:
            continue
        key = node.outputs[0]
        roots = ctx.roots[ctx.base[key]:ctx.base[key] + ctx.size[key]]
        is_carrier = np.isin(roots, list(carrier_roots))
        stuck = pruned & ctx.keep_mask(key) & ~is_carrier
        if stuck.any():
            info.blocked[node.layer.name] = info.blocked.get(node.layer.name, 0) + int(stuck.sum())
