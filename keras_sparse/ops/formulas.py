"""Scalar formulas: sparsity schedules and per-layer sparsity budgets."""

import math

__all__ = ["polynomial_sparsity", "erk_densities"]


def polynomial_sparsity(step, initial, final, begin_step, end_step, power=3):
    """Gradual-pruning sparsity at ``step`` (Zhu & Gupta, 2017).

    .. math::
        s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{t_1 - t_0}\\right)^p

    with the progress clipped to ``[0, 1]``: ``s_i`` before ``begin_step``,
    ``s_f`` from ``end_step`` on.

    Reference: M. Zhu, S. Gupta, "To prune, or not to prune", 2017.

    Example:
    >>> polynomial_sparsity(50, 0.0, 0.9, 0, 100, power=3)
    0.7875
    """
    if end_step <= begin_step:
        return float(final) if step >= begin_step else float(initial)
    progress = min(1.0, max(0.0, (step - begin_step) / (end_step - begin_step)))
    return float(final + (initial - final) * (1.0 - progress) ** power)


def erk_densities(shapes, density, power_scale=1.0):
    """Erdős–Rényi-Kernel densities for a list of weight shapes.

    Each layer's density is ``eps * (sum(shape) / prod(shape)) ** power_scale``
    with ``eps`` chosen so the total number of kept weights equals
    ``density * sum(prod(shape))``. A layer whose density would exceed 1 is
    made dense and ``eps`` is solved again over the remaining layers until no
    layer exceeds 1.

    Reference: U. Evci et al., "Rigging the Lottery", ICML 2020 (ERK);
    D. Mocanu et al., 2018 (Erdős–Rényi).

    Args:
        shapes: list of weight shapes (tuples of ints).
        density: overall fraction of weights to keep, in ``(0, 1]``.
        power_scale: exponent on the raw ERK probability (1.0 = ERK).

    Returns:
        A list of densities in ``(0, 1]``, one per shape.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(
            f"`density` must be in (0, 1]. Received: density={density}"
        )
    sizes = [math.prod(s) for s in shapes]
    raw = [(sum(s) / math.prod(s)) ** power_scale for s in shapes]
    dense = set()
    while True:
        budget = density * sum(sizes)
        budget -= sum(sizes[i] for i in dense)
        divisor = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        if divisor == 0:
            break
        eps = budget / divisor
        over = [
            i for i in range(len(shapes))
            if i not in dense and eps * raw[i] > 1.0
        ]
        if not over:
            break
        dense.update(over)
    return [
        1.0 if i in dense else float(eps * raw[i]) for i in range(len(shapes))
    ]
