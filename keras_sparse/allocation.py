"""``ks.allocate``: per-layer sparsities that meet one global budget of
parameters, FLOPs or bytes, from measured sensitivities or from LAMP.

The budget is a fraction of the dense cost of the *prunable weights* (the
kernels ``ks.prune`` masks in the layers considered) that is removed:

* ``by="params"``: weights removed / prunable weights. This is the masked
  sparsity ``ks.report(model).totals["sparsity"]`` shows after pruning.
* ``by="flops"``: FLOPs of the removed weights / dense FLOPs of the prunable
  weights, with ``ks.report``'s cost model (one multiply-accumulate = 2 FLOPs
  per example; a weight costs ``2 * layer_macs(layer, name, 1)``: a kernel
  weight of a convolution counts once per output position). For a model
  whose weighted layers are all prunable this is the fraction of the
  report's ``dense_flops`` removed (``effective_flops / dense_flops = 1 -
  budget``): ``budget=0.9`` keeps 10 % of the dense FLOPs.
* ``by="bytes"``: value bytes of the removed weights / dense value bytes of
  the prunable weights, a weight costing its dtype's size, or its packed
  width (``ks.report``'s ``packed_bytes`` rule) under a kernel quantizer.
  The sparse index a compressed export adds depends on the pattern and is
  not counted.

Biases, normalization and unprunable layers are outside the budget.
"""

import math

import numpy as np

from keras_sparse.checks import check_model
from keras_sparse.checks import check_number
from keras_sparse.checks import type_error
from keras_sparse.layers.base import SparseMixin
from keras_sparse.ops.allocation import allocate_removals
from keras_sparse.ops.allocation import lamp_removals
from keras_sparse.report import layer_macs
from keras_sparse.report import packed_width
from keras_sparse.selection import prunable_weights
from keras_sparse.selection import built_prunable_weights
from keras_sparse.selection import weight_values
from keras_sparse.sensitivity import SensitivityTable

__all__ = ["allocate", "removed_fraction"]

_BY = ("params", "flops", "bytes")


def _weight_cost(layer, name, variable, by):
    if by == "params":
        return 1.0
    if by == "flops":
        macs = layer_macs(layer, name, 1)
        if macs is None:
            raise ValueError(
                f"by='flops' needs every layer's input shape; layer {layer.name!r} has none "
                "(build the model on an input, e.g. call it once). Received: by='flops'"
            )
        return 2.0 * macs
    quantizer = getattr(layer, "kernel_quantizer", None) if isinstance(layer, SparseMixin) else None
    if quantizer is not None:
        return packed_width(quantizer.precision) / 8.0
    dtype = str(getattr(variable.dtype, "name", variable.dtype))
    return 2.0 if "bfloat16" in dtype else float(np.dtype(dtype).itemsize)


def _units(model, layers, by):
    """``[(layer, [(size, cost, value or None), ...])]`` of the prunable
    layers; raises for a model with none or with unbuilt ones."""
    check_model(model)
    if by not in _BY:
        raise ValueError(f"`by` must be one of {_BY}. Received: by={by!r}")
    found = built_prunable_weights(model, layers)
    units = []
    for layer, entries in found:
        units.append((layer, [
            (int(math.prod(v.shape)), _weight_cost(layer, n, v, by), n, v)
            for n, v, _ in entries
        ]))
    return units


def removed_fraction(model, sparsities, by="params", layers=None):
    """The fraction of the prunable weights' dense cost that pruning each
    layer to ``sparsities[layer name]`` removes (layers not listed stay
    dense), counting weights as masks do: ``round(s * n)`` per weight
    tensor, at least one kept.

    Args:
        model: a built Keras model.
        sparsities: dict ``layer name -> sparsity`` (what :func:`allocate`
            returns).
        by: ``"params"``, ``"flops"`` or ``"bytes"`` (see the module doc).
        layers: the layers whose cost is the denominator, as in
            :func:`allocate` (default: every prunable layer).

    Returns:
        A float in ``[0, 1)``.

    Example:
    >>> per_layer = ks.allocate(model, 0.9, by="flops")
    >>> ks.allocation.removed_fraction(model, per_layer, by="flops")
    0.9000...
    """
    if not isinstance(sparsities, dict):
        raise type_error("sparsities", sparsities, "a dict layer name -> sparsity")
    units = _units(model, layers, by)
    total = removed = 0.0
    for layer, weights in units:
        s = sparsities.get(layer.name, 0.0)
        for size, cost, _, _ in weights:
            total += size * cost
            removed += min(int(round(s * size)), size - 1) * cost
    return removed / total if total else 0.0


def allocate(model, budget, by="params", sensitivity=None, layers=None):
    """Per-layer sparsities that remove ``budget`` of the model's cost.

    ``budget`` is the fraction of the dense cost of the prunable weights to
    remove, measured ``by`` parameters, FLOPs or bytes (the module doc
    gives each cost model exactly: ``by="flops", budget=0.9`` keeps 10 % of
    the dense FLOPs). The result is met to within one weight: pruned as
    masks count (``round(s * n)`` per weight), the removed cost is at
    least the budget and exceeds it by less than one weight's cost
    (:func:`removed_fraction` computes it).

    With a ``sensitivity`` table (:func:`keras_sparse.sensitivity`): each
    layer's measured degradation curve (metric lost against its sparsity,
    through ``(0, 0)``, made non-decreasing, linear between the measured
    levels and beyond the last one with the last segment's slope) is
    replaced by its convex minorant, and the sum of the predicted losses is
    minimised subject to the budget. That problem is convex and separable:
    the solution takes pieces of the curves in increasing order of marginal
    loss per unit of cost freed (the Lagrange multiplier at which each piece
    enters), so insensitive and costly layers go first
    (:func:`keras_sparse.ops.allocate_removals`). The losses of several
    layers are assumed to add up, which holds for small losses: measure at
    the sparsities you will reach.

    Without a table: LAMP (Lee et al., ICLR 2021). Each weight of a layer,
    sorted by increasing magnitude, scores ``w_u**2 / sum(w_v**2 for v >=
    u)``; weights are removed in increasing order of score over the whole
    model (one global threshold) until the budget is met
    (:func:`keras_sparse.ops.lamp_removals`), and each layer's sparsity is
    the share of its weights that went. Call it on trained weights.

    Every layer keeps at least one weight per tensor. Layers whose weights
    cost nothing under ``by`` (an ``Embedding`` under ``"flops"``) stay
    dense.

    Args:
        model: a built Keras model (plain or with keras_sparse layers).
        budget: fraction of the cost to remove, in ``[0, 1)``.
        by: ``"params"``, ``"flops"`` or ``"bytes"``.
        sensitivity: a :class:`SensitivityTable` measured on this model, or
            ``None`` for LAMP.
        layers: which layers to allocate over, as in ``ks.prune``; the others
            stay dense and are left out of the budget. Default: the table's
            layers with a table, else every prunable layer.

    Returns:
        dict ``layer name -> sparsity``, which ``ks.prune`` takes as
        ``distribution`` (a :class:`keras_sparse.distributions.PerLayer`).

    Raises:
        ValueError: for a budget outside ``[0, 1)`` or beyond what the layers
            can give, an unknown ``by``, a model with no prunable layer, a
            table missing a layer.
        TypeError: for a ``sensitivity`` that is not a table.

    Example:
    >>> per_layer = ks.allocate(trained, 0.95)                 # LAMP
    >>> table = ks.sensitivity(trained, (x_val, y_val), (0.5, 0.9, 0.95, 0.98))
    >>> per_layer = ks.allocate(trained, 0.9, by="flops", sensitivity=table)
    >>> model = ks.prune(trained, None, distribution=per_layer,
    ...                  schedule=ks.schedules.PolynomialDecay(0, 0.9, 0, 1000))
    """
    budget = check_number(budget, "budget", 0.0, 1.0)
    if budget >= 1.0:
        raise ValueError(f"`budget` must be in [0, 1). Received: budget={budget!r}")
    if sensitivity is not None and not isinstance(sensitivity, SensitivityTable):
        raise type_error("sensitivity", sensitivity,
                         "None or a SensitivityTable (from ks.sensitivity)")
    if sensitivity is not None and layers is None:
        known = {layer.name for layer, _ in prunable_weights(check_model(model), None)}
        absent = [name for name in sensitivity.layers if name not in known]
        if absent:
            raise ValueError(
                f"The sensitivity table names layers the model cannot prune: {absent} "
                f"(prunable: {sorted(known)}). Received: sensitivity with layers "
                f"{sensitivity.layers}"
            )
        layers = sensitivity.layers
    units = _units(model, layers, by)
    total = sum(size * cost for _, weights in units for size, cost, _, _ in weights)
    target = budget * total
    capacity = sum((size - 1) * cost for _, weights in units for size, cost, _, _ in weights)
    if target > capacity * (1 + 1e-9):
        raise ValueError(
            f"`budget` asks for more than the layers can give while keeping one weight per "
            f"tensor (at most {capacity / total if total else 0.0:.6f} of their {by}). "
            f"Received: budget={budget}, by={by!r}"
        )
    names = [layer.name for layer, _ in units]
    if sensitivity is None:
        flat = [(i, size, cost) for i, (_, weights) in enumerate(units)
                for size, cost, _, _ in weights]
        values = [value for layer, _ in units for value in weight_values(layer)]
        removed = lamp_removals(values, target, [cost for _, _, cost in flat])
        sizes, gone = [0] * len(units), [0] * len(units)
        for (i, size, _), count in zip(flat, removed):
            sizes[i] += size
            gone[i] += count
        return {name: gone[i] / sizes[i] for i, name in enumerate(names)}
    missing = [name for name in names if name not in sensitivity.layers]
    if missing:
        raise ValueError(
            f"The sensitivity table has no measurement for layers {missing}; measure them "
            f"or leave them out with `layers`. Received: sensitivity with layers "
            f"{sensitivity.layers}"
        )
    sizes = [sum(size for size, _, _, _ in weights) for _, weights in units]
    for name, size in zip(names, sizes):
        measured = {row.get("params") for row in sensitivity.rows if row["layer"] == name}
        if measured - {None, size}:
            raise ValueError(
                f"The sensitivity table was measured on another model: layer {name!r} has "
                f"{size} prunable weights here and {sorted(measured - {None})} in the table. "
                f"Received: sensitivity with layers {sensitivity.layers}"
            )
    costs = [sum(size * cost for size, cost, _, _ in weights) / max(n, 1)
             for n, (_, weights) in zip(sizes, units)]
    max_removed = [sum(size - 1 for size, _, _, _ in weights) for _, weights in units]
    curves = [sensitivity.degradation(name) for name in names]
    removed = allocate_removals(curves, sizes, costs, target, max_removed)
    return {name: removed[i] / sizes[i] for i, name in enumerate(names)}
