"""Sparse-training math: drop-and-grow, the drop-fraction schedule, per-unit
masks and the variance-preserving rescale of sparse initialization.

Pure functions on tensors (numpy arrays or backend tensors in, backend
tensors out); they know nothing about layers or optimizers. Selections are
exact and deterministic: a linear-time threshold (``numpy.partition``) and
ties filled in row-major index order, with NaN scores ranked lowest (below
``-inf``): the conventions of :mod:`keras_sparse.ops.masks`.
"""

import math

import numpy as np
from keras import ops

__all__ = [
    "cosine_drop_fraction",
    "drop_fraction",
    "drop_and_grow",
    "drop_and_grow_arrays",
    "fan_in_mask",
    "unit_fan_in",
    "variance_rescale",
]

_DECAYS = ("cosine", "constant", "linear")


def drop_fraction(step, alpha, begin_step, end_step, decay="cosine"):
    """Fraction of a layer's active weights replaced at ``step``.

    ``"cosine"`` (RigL):

    .. math::
        f(t) = \\frac{\\alpha}{2}\\left(1 + \\cos\\frac{\\pi (t - t_0)}{t_1 - t_0}\\right)

    ``"linear"``: :math:`\\alpha (1 - (t - t_0)/(t_1 - t_0))`;
    ``"constant"``: :math:`\\alpha` (SET's ζ). Progress is clipped to
    ``[0, 1]``, so ``f`` is ``alpha`` before ``begin_step`` and (except for
    ``"constant"``) 0 from ``end_step`` on.

    Reference: U. Evci et al., "Rigging the Lottery: Making All Tickets
    Winners", ICML 2020 (cosine decay).

    Args:
        step: training step ``t``.
        alpha: initial fraction in ``[0, 1]``.
        begin_step: ``t_0``.
        end_step: ``t_1`` (> ``t_0``).
        decay: ``"cosine"``, ``"linear"`` or ``"constant"``.

    Returns:
        A Python float.

    Example:
    >>> drop_fraction(50, 0.3, 0, 100)
    0.15
    """
    check_decay(decay)
    if decay == "constant":
        return float(alpha)
    if end_step <= begin_step:
        return float(alpha) if step < begin_step else 0.0
    progress = min(1.0, max(0.0, (step - begin_step) / (end_step - begin_step)))
    if decay == "linear":
        return float(alpha * (1.0 - progress))
    return float(alpha / 2.0 * (1.0 + math.cos(math.pi * progress)))


def cosine_drop_fraction(step, alpha, begin_step, end_step):
    """:func:`drop_fraction` with RigL's cosine decay."""
    return drop_fraction(step, alpha, begin_step, end_step, "cosine")


def check_decay(decay):
    """Validate a drop-fraction decay name."""
    if decay not in _DECAYS:
        raise ValueError(f"`decay` must be one of {_DECAYS}. Received: decay={decay!r}")
    return decay


def _top_of(values, count):
    """Boolean array keeping the ``count`` highest-ranked ``values`` (1-D,
    ``0 < count < size``): NaN lowest, ties in index order."""
    nan = np.isnan(values)
    key = np.where(nan, -np.inf, values) if nan.any() else values
    threshold = np.partition(key, key.size - count)[key.size - count]
    keep = key > threshold
    missing = count - int(np.count_nonzero(keep))
    for tier in (values == threshold, nan):
        if missing <= 0:
            break
        chosen = np.flatnonzero(tier)[:missing]
        keep[chosen] = True
        missing -= chosen.size
    return keep


def _top_in(scores, allowed, count):
    """Boolean array keeping the ``count`` highest-ranked ``scores`` among
    ``allowed`` entries (1-D numpy arrays); NaN lowest, ties in index
    order."""
    n_allowed = int(np.count_nonzero(allowed))
    if count <= 0:
        return np.zeros(scores.shape, dtype=bool)
    if count >= n_allowed:
        return allowed.copy()
    # Select among the candidates only (few of them for the active entries
    # of a sparse layer; -inf padding would tie with real -inf scores).
    candidates = np.flatnonzero(allowed)
    keep = np.zeros(scores.shape, dtype=bool)
    keep[candidates[_top_of(scores[candidates], count)]] = True
    return keep


def _to_numpy(x, dtype=None):
    value = np.asarray(ops.convert_to_numpy(x))
    return value if dtype is None else value.astype(dtype, copy=False)


def drop_and_grow(mask, drop_scores, grow_scores, fraction, regrow_dropped=True):
    """One drop-and-grow update with a constant number of active entries.

    Let ``n = round(fraction * active)``, capped at the number of inactive
    entries. Among the active entries, the ``active - n`` with the highest
    ``drop_scores`` are kept (the ``n`` lowest are dropped); then ``n``
    entries with the highest ``grow_scores`` are grown among every entry not
    kept, *including the ones just dropped* (RigL's Algorithm 1 and its
    reference code: ``I_grow = ArgTopK_{i not in I_active}``). A dropped
    entry that is grown again simply stays active, so fewer than ``n``
    connections may really move; the active count is unchanged either way.
    With ``regrow_dropped=False`` only the entries inactive *before* the
    update are candidates, so exactly ``n`` connections move.

    With ``drop_scores = |w|`` and ``grow_scores`` random this is SET; with
    ``grow_scores = |∇L|`` it is RigL. Ties follow the package convention
    (the lower index is kept): among equal drop scores the later entry is
    dropped, among equal grow scores the earlier one is grown.

    References: D. Mocanu et al., "Scalable training of artificial neural
    networks with adaptive sparse connectivity", Nature Communications 2018
    (SET); U. Evci et al., ICML 2020 (RigL).

    Args:
        mask: boolean tensor (``True`` = active).
        drop_scores: tensor shaped like ``mask``; low = dropped first.
        grow_scores: tensor shaped like ``mask``; high = grown first.
        fraction: fraction of the active entries to replace, in ``[0, 1]``.
        regrow_dropped: whether the entries just dropped are candidates for
            regrowth (default, as in RigL).

    Returns:
        ``(new_mask, dropped, grown)``: boolean tensors shaped like ``mask``;
        ``dropped`` = active before and not after, ``grown`` = active after
        and not before (equal counts).

    Example:
    >>> new, dropped, grown = drop_and_grow(
    ...     np.array([True, True, False, False]), np.array([3., 1., 0., 0.]),
    ...     np.array([0., 0., 5., 2.]), 0.5)
    >>> new
    [True, False, True, False]
    """
    arrays = drop_and_grow_arrays(
        _to_numpy(mask, bool),
        _to_numpy(drop_scores, np.float32),
        _to_numpy(grow_scores, np.float32),
        fraction,
        regrow_dropped=regrow_dropped,
    )
    return tuple(ops.convert_to_tensor(a) for a in arrays)


def drop_and_grow_arrays(mask, drop_scores, grow_scores, fraction, regrow_dropped=True):
    """:func:`drop_and_grow` on numpy arrays, returning numpy arrays (what
    callbacks use: it avoids round trips through the backend)."""
    if not 0.0 <= float(fraction) <= 1.0 or math.isnan(float(fraction)):
        raise ValueError(f"`fraction` must be in [0, 1]. Received: fraction={fraction!r}")
    mask = np.asarray(mask, dtype=bool)
    shape = mask.shape
    flat_mask = mask.reshape(-1)
    drop = np.asarray(drop_scores).reshape(-1)
    grow = np.asarray(grow_scores).reshape(-1)
    if drop.shape != flat_mask.shape or grow.shape != flat_mask.shape:
        raise ValueError(
            "`drop_scores` and `grow_scores` must have the shape of `mask` "
            f"{shape}. Received: drop_scores of shape {tuple(np.shape(drop_scores))}, "
            f"grow_scores of shape {tuple(np.shape(grow_scores))}"
        )
    active = int(np.count_nonzero(flat_mask))
    count = min(int(round(float(fraction) * active)), flat_mask.size - active)
    if count <= 0:
        none = np.zeros(shape, dtype=bool)
        return mask.copy(), none, none.copy()
    # Keep the (active - count) best active entries = drop the `count` worst.
    kept = _top_in(drop, flat_mask, active - count)
    candidates = ~kept if regrow_dropped else ~flat_mask
    new_mask = kept | _top_in(grow, candidates, count)
    dropped = flat_mask & ~new_mask
    grown = new_mask & ~flat_mask
    return tuple(a.reshape(shape) for a in (new_mask, dropped, grown))


def _unit_view(array, output_axes):
    """Move ``output_axes`` last and flatten to ``(fan_in, units)``."""
    rank = array.ndim
    outs = sorted(a % rank for a in output_axes)
    ins = [a for a in range(rank) if a not in outs]
    moved = np.transpose(array, ins + outs)
    fan_in = int(np.prod([array.shape[a] for a in ins], dtype=np.int64))
    units = int(np.prod([array.shape[a] for a in outs], dtype=np.int64))
    return moved.reshape(fan_in, units), ins + outs, moved.shape


def _from_unit_view(flat, order, moved_shape):
    inverse = np.argsort(order)
    return np.transpose(flat.reshape(moved_shape), inverse)


def unit_fan_in(mask, output_axes=(-1,)):
    """Number of active inputs of each output unit (numpy int array).

    A unit is one index of ``output_axes``; its inputs are the entries over
    every other axis (for a convolution: kernel positions times input
    channels).
    """
    mask_np = _to_numpy(mask, bool)
    flat, _, _ = _unit_view(mask_np, output_axes)
    return flat.sum(axis=0)


def fan_in_mask(scores, keep, output_axes=(-1,)):
    """Mask keeping exactly ``keep`` inputs per output unit: the ``keep``
    highest scores of each unit (Martens-style sparse connectivity).

    Reference: J. Martens, "Deep learning via Hessian-free optimization",
    ICML 2010 (each unit gets a fixed number of non-zero incoming weights).

    Args:
        scores: tensor of any rank.
        keep: inputs kept per unit, ``0 <= keep <= fan_in``.
        output_axes: axes indexing output units (``(-1,)`` for Dense and
            Conv kernels).

    Returns:
        A boolean tensor shaped like ``scores``; every unit has exactly
        ``keep`` ``True`` entries (NaN scores lowest, ties in index order).
    """
    values = _to_numpy(scores, np.float32)
    flat, order, moved_shape = _unit_view(values, output_axes)
    fan_in = flat.shape[0]
    keep = int(keep)
    if not 0 <= keep <= fan_in:
        raise ValueError(
            f"`keep` must be between 0 and the fan-in {fan_in}. Received: keep={keep}"
        )
    if keep == 0:
        kept = np.zeros(flat.shape, dtype=bool)
        return ops.convert_to_tensor(_from_unit_view(kept, order, moved_shape))
    nan = np.isnan(flat)
    key = np.where(nan, -np.inf, flat)
    threshold = np.partition(key, fan_in - keep, axis=0)[fan_in - keep]
    kept = key > threshold
    missing = keep - kept.sum(axis=0)
    # Entries ranked equal to the threshold, in index order: real ties,
    # then (when the threshold is -inf) NaNs.
    for tier in (flat == threshold, nan):
        kept = kept | (tier & (np.cumsum(tier, axis=0) <= missing))
        missing = missing - tier.sum(axis=0)
    return ops.convert_to_tensor(_from_unit_view(kept, order, moved_shape))


def variance_rescale(before, after, output_axes=(-1,)):
    """Per-entry factor that keeps each unit's pre-activation variance when
    its fan-in shrinks from ``before`` to ``after`` masks.

    For a unit with ``k_0`` active inputs before and ``k_1 > 0`` after, the
    surviving weights are multiplied by

    .. math::
        \\sqrt{k_0 / k_1}

    so that, for i.i.d. zero-mean weights and inputs, the variance of the
    unit's pre-activation :math:`\\sum_i w_i x_i` (∝ fan-in × Var(w)) is
    unchanged: a dense initializer scaled for fan-in ``n`` stays correctly
    scaled on the sparse network (the sparsity-aware initialization of
    Evci et al. 2022; Liu et al. 2019). Units left with no input get 1.

    Args:
        before: boolean mask before pruning (all ``True`` for a dense layer).
        after: boolean mask after pruning.
        output_axes: axes indexing output units.

    Returns:
        A float32 tensor shaped like the masks.
    """
    k0 = unit_fan_in(before, output_axes).astype(np.float64)
    k1 = unit_fan_in(after, output_axes).astype(np.float64)
    factor = np.where(k1 > 0, np.sqrt(k0 / np.maximum(k1, 1.0)), 1.0).astype(np.float32)
    after_np = _to_numpy(after, bool)
    flat, order, moved_shape = _unit_view(np.ones(after_np.shape, np.float32), output_axes)
    flat = flat * factor[None, :]
    return ops.convert_to_tensor(_from_unit_view(flat, order, moved_shape))
