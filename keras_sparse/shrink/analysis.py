"""Analysis of :func:`keras_sparse.shrink`: a rule per node, constants,
links and the keep flags (to a fixed point), and where the offsets of
removed residual branches go.
"""

import numpy as np

from keras_sparse.shrink.context import _Context
from keras_sparse.shrink.rules import rule_for
from keras_sparse.shrink.rules_channel import AddRule


def _analyse(graph, drop_inputs):
    ctx = _Context(graph, drop_inputs)
    for key in graph.input_keys:
        ctx.set_live(key)
    for node in graph.nodes:
        node.rule = rule_for(node, graph)
        node.rule.consts(ctx)
    for node in graph.nodes:
        node.rule.links(ctx)
        node.rule.pins(ctx)
    _link_shared_calls(ctx)
    for key in graph.output_keys:
        ctx.pin(key)
    for key in graph.input_keys:
        if not drop_inputs or graph.tensors[key].channels is None:
            ctx.pin(key)
    ctx.finish_groups()
    _propagate(ctx)
    for key in graph.input_keys:
        if not ctx.keep_mask(key).any():  # an unused input stays as it is
            ctx.mark(key, np.ones(ctx.size[key], dtype=bool))
    _propagate(ctx)
    _plan_offsets(ctx)
    return ctx


def _link_shared_calls(ctx):
    first = {}
    for node in ctx.graph.nodes:
        earlier = first.setdefault(id(node.layer), node)
        if earlier is node:
            continue
        for a, b in zip(earlier.inputs + earlier.outputs, node.inputs + node.outputs):
            if ctx.size[a] == ctx.size[b]:
                ctx.link(a, np.arange(ctx.size[a]), b, np.arange(ctx.size[b]))
            else:
                ctx.pin(a)
                ctx.pin(b)


def _propagate(ctx):
    nodes = ctx.graph.nodes[::-1]
    ctx.changed = True
    while ctx.changed:
        ctx.changed = False
        for node in nodes:
            node.rule.demand(ctx)


def _plan_offsets(ctx):
    """Fold the constant of a removed residual branch into the producer of
    another input of the ``Add`` when that producer is linear with a bias
    and feeds only the ``Add``; otherwise the offset travels on."""
    graph = ctx.graph
    for node in graph.nodes:
        rule = node.rule
        if not isinstance(rule, AddRule) or not rule.dropped:
            continue
        offset = rule.dropped_offset(ctx)
        if not np.any(offset[ctx.kept(node.outputs[0])] != 0):
            ctx.offset_absorbed.add(node.index)
            continue
        for key in rule.remaining:
            producer = graph.producer(key)
            tensor = graph.tensors[key]
            if (
                producer is not None
                and producer.rule.can_take_extra_bias()
                and len(tensor.consumers) == 1
                and not graph.is_output(key)
                and producer.index not in ctx.extra_bias
            ):
                ctx.extra_bias[producer.index] = offset
                ctx.offset_absorbed.add(node.index)
                break
