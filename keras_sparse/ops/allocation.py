"""Per-layer sparsity budgets: LAMP scores and the allocation of a global
removal budget over measured sensitivity curves.

Host math on numpy arrays (these run once, before training, on weight
values read from the model): no tensor is traced and nothing depends on
the backend.
"""

import math

import numpy as np
from keras import ops

__all__ = ["lamp_scores", "lamp_removals", "allocate_removals"]


def lamp_scores(weight):
    """LAMP score of every entry of one weight tensor.

    With the entries sorted by increasing magnitude (ties in flat index
    order), entry ``u`` scores

    .. math::
        \\mathrm{score}(u) = \\frac{w_u^2}{\\sum_{v \\ge u} w_v^2}

    (``0`` where the sum is ``0``, i.e. for zero weights with only zeros
    above them). Scores grow with magnitude inside a tensor and the largest
    entry scores 1, so removing the lowest scores of a tensor removes its
    smallest weights; ranking the scores of every tensor together gives
    each layer its own sparsity.

    Reference: J. Lee, S. Park, S. Mo, S. Ahn, J. Shin, "Layer-adaptive
    sparsity for the magnitude-based pruning", ICLR 2021.

    Args:
        weight: an array or tensor of any shape.

    Returns:
        A float64 numpy array shaped like ``weight``, values in ``[0, 1]``.

    Example:
    >>> lamp_scores(np.array([1.0, -2.0, 2.0]))  # sorted squares 1, 4, 4
    array([0.11111111, 0.5, 1.])
    """
    values = np.asarray(ops.convert_to_numpy(weight), dtype=np.float64)
    squares = np.square(values.reshape(-1))
    order = np.argsort(squares, kind="stable")
    ranked = squares[order]
    tail = np.cumsum(ranked[::-1])[::-1]
    ranked_scores = np.divide(ranked, tail, out=np.zeros_like(ranked), where=tail > 0)
    scores = np.empty_like(ranked_scores)
    scores[order] = ranked_scores
    return scores.reshape(values.shape)


def _needed(cumulative, target):
    """Smallest ``k`` with ``cumulative[k - 1] >= target`` (0 for a target
    of 0), with a relative tolerance for float sums."""
    if target <= 0:
        return 0
    slack = 1e-9 * max(1.0, abs(target))
    return int(np.searchsorted(cumulative, target - slack, side="left")) + 1


def lamp_removals(weights, budget, costs=None):
    """How many entries of each tensor LAMP removes to free ``budget``.

    Every entry of every tensor is ranked by :func:`lamp_scores` (ties:
    earlier tensors first, then the lower flat index); entries are removed
    in that order, skipping entries of zero cost, until the removed cost
    reaches ``budget`` (one global threshold on the scores). Each tensor
    keeps at least its best entry.

    Args:
        weights: list of arrays.
        budget: total cost to remove (with unit costs, a number of entries).
        costs: cost of one entry of each tensor (default 1 each: a
            parameter budget); e.g. FLOPs or bytes per weight.

    Returns:
        A list of ints, the entries removed from each tensor: its smallest
        weights by magnitude.

    Raises:
        ValueError: if the tensors cannot free ``budget``.

    Example:
    >>> lamp_removals([np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0])], 2)
    [2, 0]
    """
    costs = [1.0] * len(weights) if costs is None else [float(c) for c in costs]
    scores, owners = [], []
    for index, (weight, cost) in enumerate(zip(weights, costs)):
        flat = lamp_scores(weight).reshape(-1)
        if flat.size < 2 or cost <= 0:
            continue
        # The best entry (score 1, or the last in magnitude order) stays.
        ranked = np.sort(flat, kind="stable")[:-1]
        scores.append(ranked)
        owners.append(np.full(ranked.size, index))
    removed = [0] * len(weights)
    if budget <= 0:
        return removed
    if not scores:
        raise ValueError(f"Nothing can be removed to free budget={budget}.")
    scores = np.concatenate(scores)
    owners = np.concatenate(owners)
    order = np.lexsort((owners, scores))
    cumulative = np.cumsum(np.asarray(costs)[owners[order]])
    count = _needed(cumulative, budget)
    if count > order.size:
        raise ValueError(
            f"The tensors can free at most {cumulative[-1]} while keeping one entry "
            f"each. Received: budget={budget}"
        )
    counts = np.bincount(owners[order[:count]], minlength=len(weights))
    return [int(c) for c in counts]


def _monotone_curve(points, size, max_removed):
    """``(sparsities, degradations)`` from measured ``(sparsity, degradation)``
    points: ``(0, 0)`` added, degradations made non-negative and
    non-decreasing (a running maximum), cut or extended to the largest
    sparsity allowed, ``max_removed / size``. Beyond the last measured
    point the curve continues linearly with the slope of its last segment,
    at least the mean slope from 0."""
    s_max = max_removed / size
    xs, ys = [0.0], [0.0]
    for s, d in sorted(points):
        if s <= xs[-1]:
            ys[-1] = max(ys[-1], d)
            continue
        xs.append(float(s))
        ys.append(max(ys[-1], float(d)))
    xs, ys = np.asarray(xs), np.asarray(ys)
    if s_max <= xs[-1]:
        end = np.interp(s_max, xs, ys)
        keep = xs < s_max
        return np.append(xs[keep], s_max), np.append(ys[keep], end)
    if len(xs) > 1:
        slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), ys[-1] / xs[-1])
    else:
        slope = 0.0
    return np.append(xs, s_max), np.append(ys, ys[-1] + slope * (s_max - xs[-1]))


def _lower_hull(xs, ys):
    """Vertices of the greatest convex function below the points (x sorted)."""
    hull = []
    for x, y in zip(xs, ys):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (x - x1) >= (y - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append((float(x), float(y)))
    return hull


def allocate_removals(curves, sizes, costs, budget, max_removed=None, step=0.01):
    """Entries to remove per layer so the removed cost reaches ``budget``
    with the least predicted degradation.

    Each layer ``i`` has ``n_i`` entries of cost ``c_i`` and a measured
    curve ``d_i(s)``: the degradation of the model's metric when only that
    layer is pruned to sparsity ``s``. The curve is completed as
    :func:`_monotone_curve` says (through ``(0, 0)``, non-decreasing,
    linear beyond the last point) and replaced by its convex minorant
    :math:`\\breve d_i`. The problem

    .. math::
        \\min_{s} \\sum_i \\breve d_i(s_i) \\quad \\text{s.t.}
        \\sum_i c_i n_i s_i \\ge B

    is then convex and separable; its solution is the greedy one: cut the
    hull segments into pieces of at most ``step`` in sparsity and take them
    in increasing order of price (degradation per unit of cost freed,
    :math:`\\breve d_i'(s) / (c_i n_i)`, the Lagrange multiplier at which
    the piece enters), ties to the piece at the lower sparsity, then the
    earlier layer, the last piece in part. The sparsities are then
    rounded down to whole entries and entries added one at a time, each to
    the layer whose next entry is cheapest, until the budget is met (it is
    exceeded by less than the cost of one entry). Layers of cost 0 are not
    pruned.

    Args:
        curves: per layer, a list of ``(sparsity, degradation)`` points.
        sizes: entries per layer.
        costs: cost of one entry per layer.
        budget: total cost to remove.
        max_removed: per layer, the most entries that may go (default: all
            but one).
        step: the largest piece of sparsity taken at once (spreads equal
            prices evenly over layers).

    Returns:
        A list of ints, entries removed per layer.

    Raises:
        ValueError: if the layers cannot free ``budget``.

    Example:
    >>> allocate_removals([[(0.5, 0.0), (0.9, 0.0)], [(0.5, 0.3), (0.9, 0.9)]],
    ...                   [100, 100], [1, 1], 100)
    [99, 1]
    """
    count = len(sizes)
    if max_removed is None:
        max_removed = [max(n - 1, 0) for n in sizes]
    capacity = sum(m * c for m, c in zip(max_removed, costs) if c > 0)
    slack = 1e-9 * max(1.0, abs(budget))
    if budget > capacity + slack:
        raise ValueError(
            f"The layers can free at most {capacity} while keeping one entry each. "
            f"Received: budget={budget}"
        )
    hulls, pieces = [], []
    for i in range(count):
        if sizes[i] == 0 or costs[i] <= 0 or max_removed[i] == 0:
            hulls.append(None)
            continue
        xs, ys = _monotone_curve(curves[i], sizes[i], max_removed[i])
        hull = _lower_hull(xs, ys)
        hulls.append(hull)
        unit = sizes[i] * costs[i]
        for (x0, y0), (x1, y1) in zip(hull[:-1], hull[1:]):
            price = (y1 - y0) / ((x1 - x0) * unit)
            cuts = max(1, math.ceil((x1 - x0) / step - 1e-9))
            edges = np.linspace(x0, x1, cuts + 1)
            for a, b in zip(edges[:-1], edges[1:]):
                pieces.append((price, float(b), i, float(a)))
    pieces.sort()
    sparsity = [0.0] * count
    remaining = budget
    for price, end, i, start in pieces:
        if remaining <= slack:
            break
        amount = (end - start) * sizes[i] * costs[i]
        if amount >= remaining:
            sparsity[i] = start + remaining / (sizes[i] * costs[i])
            remaining = 0.0
            break
        sparsity[i] = end
        remaining -= amount
    removed = [
        min(int(math.floor(s * n + 1e-9)), m) for s, n, m in zip(sparsity, sizes, max_removed)
    ]

    def next_price(i):
        # Slope of the hull just after the layer's current sparsity.
        x = removed[i] / sizes[i]
        hull = hulls[i]
        for (x0, y0), (x1, y1) in zip(hull[:-1], hull[1:]):
            if x < x1 - 1e-12:
                return (y1 - y0) / ((x1 - x0) * sizes[i] * costs[i])
        return math.inf

    freed = sum(r * c for r, c in zip(removed, costs))
    while freed < budget - slack:
        open_layers = [
            i for i in range(count)
            if hulls[i] is not None and removed[i] < max_removed[i]
        ]
        best = min(open_layers, key=lambda i: (next_price(i), removed[i] / sizes[i], i))
        removed[best] += 1
        freed += costs[best]
    return removed
