"""Mask functions: scores in, boolean keep-mask out.

Every function here is pure math on tensors written with ``keras.ops``: it
accepts numpy arrays or backend tensors, returns a boolean tensor of the same
shape as ``scores`` (``True`` = keep), and knows nothing about layers.

Conventions shared by all functions:

* A higher score means "more important, keep first".
* ``sparsity`` is the fraction of entries (or groups) to remove. The number
  removed is ``round(sparsity * count)``, capped at ``count - 1``: a mask
  keeps at least one entry, and a structured mask at least one group (block,
  unit), whatever the sparsity in ``[0, 1)``. A ``Dense(1)`` kernel on 32
  features at sparsity 0.99 keeps 1 weight (``round(31.68) = 32`` would
  remove them all). Pass ``allow_empty=True`` to lift the cap and allow an
  all-``False`` mask. Below the cap the result is within half an entry of
  the target.
* Non-finite scores are ranked, never dropped from the count: ``NaN`` ranks
  lowest (pruned first, below ``-inf``), then ``-inf``, then the finite
  values, then ``+inf``. A mask keeps exactly as many entries with
  non-finite scores as with finite ones.
* Ties are broken deterministically: among equal scores (NaNs included)
  the entry with the lower flat (row-major) index is kept.
* Inside ``tf.function`` / ``jax.jit``, ``sparsity`` may be a scalar
  tensor: the mask comes from a sorted threshold and a cumulative count of
  ties, so no shape depends on the sparsity and one trace serves every
  value. A tensor sparsity is not validated and ``sparsity * count`` is
  rounded in float32 (it gives the mask of the same Python float unless
  that product lies within float32 rounding of a half-integer).
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_sparse import backend
from keras_sparse.checks import check_bool
from keras_sparse.checks import type_error

__all__ = [
    "check_sparsity",
    "topk_mask",
    "global_topk_masks",
    "nm_mask",
    "block_mask",
    "channel_mask",
    "mask_sparsity",
]


def check_sparsity(sparsity, name="sparsity"):
    """Validate a sparsity value and return it as a Python float.

    Raises:
        ValueError: if ``sparsity`` is not a number in ``[0, 1)``.
    """
    if isinstance(sparsity, (str, bool, np.bool_)) or not isinstance(
        sparsity, (numbers.Real, np.ndarray)
    ):
        raise ValueError(
            f"`{name}` must be a number in [0, 1). Received: {name}={sparsity!r}"
        )
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a number in [0, 1). Received: {name}={sparsity!r}"
        ) from None
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise ValueError(
            f"`{name}` must be in [0, 1). Received: {name}={sparsity!r}"
        )
    return value


def _is_static(value):
    """Whether ``value`` is a Python or numpy number (not a tensor)."""
    return isinstance(value, (numbers.Real, np.ndarray, np.generic))


def _traced(value):
    """Whether ``value`` is a symbolic tensor (``tf.function``, ``jax.jit``)."""
    return not _is_static(value) and backend.is_traced(value)


def _read_sparsity(sparsity):
    """A validated Python float, or a float32 scalar tensor when
    ``sparsity`` is a traced tensor (which cannot be read on the host)."""
    if _is_static(sparsity) or not hasattr(sparsity, "shape"):
        # Numbers, and whatever is not a tensor (a string, a list, None).
        return check_sparsity(sparsity)
    if not backend.is_traced(sparsity):
        return check_sparsity(np.asarray(ops.convert_to_numpy(sparsity)))
    if len(sparsity.shape):
        raise ValueError(
            f"A tensor `sparsity` must be a scalar. Received: sparsity of shape "
            f"{tuple(sparsity.shape)}"
        )
    return ops.cast(sparsity, "float32")


def _num_kept(sparsity, count, min_keep):
    """``count - round(sparsity * count)``, at least ``min_keep``: a Python
    int for a float ``sparsity``, an int32 scalar tensor for a tensor one."""
    max_removed = max(count - min_keep, 0)
    if isinstance(sparsity, float):
        return count - min(int(round(sparsity * count)), max_removed)
    removed = ops.clip(ops.round(sparsity * float(count)), 0.0, float(max_removed))
    return count - ops.cast(removed, "int32")


def _keep_top_numpy(values, keep, forced=None):
    """:func:`_keep_top` on a 1-D float32 numpy array, ``keep`` a Python
    int; ``forced`` marks entries ranked above everything else."""
    nan = np.isnan(values)
    has_nan = bool(nan.any())
    key = np.where(nan, np.float32(-np.inf), values) if has_nan else values
    if forced is not None:
        key = np.where(forced, np.float32(np.inf), key)
    # A full SIMD sort is faster than partition here: pruned kernels hold
    # many exact zeros, on which selection algorithms degrade.
    threshold = np.sort(key)[values.size - keep]
    keep_mask = key > threshold
    missing = keep - int(np.count_nonzero(keep_mask))
    for tier in _tie_tiers(values, threshold, keep_mask, nan if has_nan else None, forced):
        if missing <= 0:
            break
        chosen = np.flatnonzero(tier)[:missing]
        keep_mask[chosen] = True
        missing -= chosen.size
    return keep_mask


def _tie_tiers(values, threshold, keep_mask, nan, forced):
    """The entries ranked equal to the threshold, best first, each group
    filled in index order: forced entries, then real ties, then (when the
    threshold is -inf) NaNs. Lazily, as most updates need only the first."""
    free = None if forced is None else ~forced
    if forced is not None:
        yield forced & ~keep_mask
    ties = values == threshold
    yield ties if free is None else ties & free
    if nan is not None:
        yield nan if free is None else nan & free


def _best_numpy(values):
    """Index of the highest-ranked entry of a non-empty 1-D array."""
    nan = np.isnan(values)
    if nan.all():
        return 0
    hits = np.flatnonzero(values == np.max(values[~nan]))
    return int(hits[0])


def _best_one_hot(flat):
    """Boolean 1-D tensor marking the highest-ranked entry of ``flat``."""
    n = int(flat.shape[0])
    key = ops.where(ops.isnan(flat), ops.full((), -np.inf, flat.dtype), flat)
    hits = ops.equal(flat, ops.max(key))
    first = ops.cast(ops.argmax(ops.cast(hits, "int32")), "int32")
    index = ops.where(ops.any(hits), first, ops.zeros((), "int32"))
    return ops.equal(ops.arange(n, dtype="int32"), index)


def _keep_top_along_last(scores, keep, forced=None):
    """Boolean mask keeping the ``keep`` highest-ranked entries along the
    last axis of ``scores`` (float32, or int32 keys of :func:`_order_key`),
    in ``keras.ops``.

    ``keep`` is an int or an int32 scalar tensor in ``[0, length]``. The
    threshold is read from a sort at a dynamic index and the entries equal
    to it are filled in index order with a cumulative sum, so no shape
    depends on ``keep`` (one trace serves every sparsity). ``forced`` marks
    entries ranked above everything else.
    """
    length = int(scores.shape[-1])
    if keras.backend.is_float_dtype(scores.dtype):
        nan = ops.isnan(scores)
        key = ops.where(nan, ops.full((), -np.inf, scores.dtype), scores)
    else:
        # Integer keys (:func:`_order_key`) have no NaN.
        nan, key = None, scores
    if forced is not None:
        key = ops.where(forced, ops.full((), np.inf, scores.dtype), key)
    keep = ops.cast(keep, "int32")
    index = ops.clip(length - keep, 0, length - 1)
    index = ops.broadcast_to(
        ops.reshape(index, (1,) * len(scores.shape)), tuple(scores.shape[:-1]) + (1,)
    )
    threshold = ops.take_along_axis(ops.sort(key, axis=-1), index, axis=-1)
    keep_mask = ops.greater(key, threshold)
    missing = keep - ops.sum(ops.cast(keep_mask, "int32"), axis=-1, keepdims=True)
    tiers = [ops.equal(scores, threshold)] + ([] if nan is None else [nan])
    if forced is not None:
        free = ops.logical_not(forced)
        tiers = [ops.logical_and(forced, ops.logical_not(keep_mask))] + [
            ops.logical_and(tier, free) for tier in tiers
        ]
    for tier in tiers:
        counts = ops.cast(tier, "int32")
        rank = ops.cumsum(counts, axis=-1)
        keep_mask = ops.logical_or(
            keep_mask, ops.logical_and(tier, ops.less_equal(rank, missing))
        )
        missing = missing - ops.sum(counts, axis=-1, keepdims=True)
    return keep_mask


def _keep_top(flat_scores, keep, segments=None):
    """Boolean mask over a 1-D tensor keeping the ``keep`` highest-ranked
    entries (the module's ranking: NaN lowest, ties in index order).

    Eagerly, the threshold (the ``keep``-th largest value) is read on the
    host with a vectorized sort and ties at the threshold are filled in index
    order: no traced shape depends on ``keep`` (no recompilation as a
    schedule moves) and an update costs a fraction of a device top-k. Inside
    ``tf.function``/``jax.jit`` the same threshold rule runs in
    ``keras.ops`` (:func:`_keep_top_along_last`), where ``keep`` may be a
    tensor.

    ``segments``: sizes of consecutive parts of ``flat_scores`` that each
    keep their best entry (``keep`` must be at least the number of non-empty
    parts).
    """
    n = int(flat_scores.shape[0])
    host = isinstance(flat_scores, np.ndarray)
    if isinstance(keep, numbers.Integral):
        if keep >= n:
            return np.ones((n,), dtype=bool) if host else ops.ones((n,), dtype="bool")
        if keep <= 0:
            return np.zeros((n,), dtype=bool) if host else ops.zeros((n,), dtype="bool")
        if host:
            return _keep_top_host(flat_scores.astype(np.float32, copy=False), keep, segments)
    scores = ops.cast(flat_scores, "float32")
    if _traced(scores) or not isinstance(keep, numbers.Integral):
        forced = None
        if segments is not None:
            parts, start = [], 0
            for size in segments:
                part = scores[start : start + size]
                parts.append(_best_one_hot(part) if size else ops.zeros((0,), "bool"))
                start += size
            forced = ops.concatenate(parts, axis=0)
        return _keep_top_along_last(scores, keep, forced)
    values = np.asarray(ops.convert_to_numpy(scores), dtype=np.float32)
    return ops.convert_to_tensor(_keep_top_host(values, keep, segments))


def _keep_top_host(values, keep, segments):
    """:func:`_keep_top` on a 1-D float32 numpy array with an integer
    ``keep``: a numpy boolean array."""
    forced = None
    if segments is not None:
        forced, start = np.zeros(values.size, dtype=bool), 0
        for size in segments:
            if size:
                forced[start + _best_numpy(values[start : start + size])] = True
            start += size
    return _keep_top_numpy(values, keep, forced)


def topk_mask(scores, sparsity, allow_empty=False):
    """Unstructured mask keeping the largest scores of one tensor.

    .. math::
        m_i = [\\,\\mathrm{rank}(s_i) < n - r\\,], \\qquad
        r = \\min(\\mathrm{round}(\\rho\\,n),\\; n - 1)

    (``r = round(rho n)`` with ``allow_empty=True``). Ranks follow the module
    conventions (NaN lowest, ties to the lower index).

    Args:
        scores: tensor of any shape.
        sparsity: fraction of entries to remove, in ``[0, 1)``; inside
            ``tf.function``/``jax.jit`` also a scalar tensor.
        allow_empty: remove ``round(sparsity * n)`` entries even when that
            is all of them (default: at least one entry is kept).

    Returns:
        A boolean tensor shaped like ``scores``.

    Example:
    >>> topk_mask(np.array([[0.1, 3.0], [2.0, 0.5]]), 0.5)
    [[False, True], [True, False]]
    >>> topk_mask(np.arange(10.0), 0.99)   # round(9.9) = 10, capped at 9
    [False, ..., False, True]
    """
    check_bool(allow_empty, "allow_empty")
    sparsity = _read_sparsity(sparsity)
    if isinstance(scores, np.ndarray) and isinstance(sparsity, float):
        # Host scores, host mask: no device round trip.
        keep = _num_kept(sparsity, scores.size, 0 if allow_empty else 1)
        return _keep_top(scores.reshape(-1), keep).reshape(scores.shape)
    scores = ops.convert_to_tensor(scores)
    n = int(math.prod(scores.shape))
    keep = _num_kept(sparsity, n, 0 if allow_empty else 1)
    flat = _keep_top(ops.reshape(scores, (-1,)), keep)
    return ops.reshape(flat, scores.shape)


def global_topk_masks(scores_list, sparsity, allow_empty=False):
    """Masks for several tensors from one threshold across all of them.

    The ``round(sparsity * total)`` lowest scores over the concatenation of
    every tensor are removed, so layers compete for the kept budget
    (global magnitude pruning). Ties are broken by position in the
    concatenation (earlier tensors first).

    Every tensor keeps at least one entry, its highest-ranked one: that
    entry is kept first and the rest of the budget goes by the shared
    threshold, so a tensor that would lose everything takes its best entry
    from the lowest-ranked entries kept elsewhere. The total removed is
    ``min(round(sparsity * total), total - T)`` for ``T`` non-empty tensors,
    as close to the target as the rule allows. With ``allow_empty=True``
    there is no such reservation and a tensor may lose every entry.

    Args:
        scores_list: list of tensors of any shapes.
        sparsity: fraction of all entries to remove, in ``[0, 1)``; inside
            ``tf.function``/``jax.jit`` also a scalar tensor.
        allow_empty: let a tensor lose all its entries.

    Returns:
        A list of boolean tensors shaped like the inputs.

    Example:
    >>> global_topk_masks([np.full(2, 0.1), np.full(4, 5.0)], 0.5)
    [[True, False], [True, True, False, False]]  # 0.1 tensor keeps its best
    """
    if not isinstance(scores_list, (list, tuple)):
        raise type_error("scores_list", scores_list, "a list of score tensors")
    check_bool(allow_empty, "allow_empty")
    sparsity = _read_sparsity(sparsity)
    if not scores_list:
        return []
    host = isinstance(sparsity, float) and all(isinstance(s, np.ndarray) for s in scores_list)
    if host:
        tensors = list(scores_list)
        flat = np.concatenate([np.asarray(t, np.float32).reshape(-1) for t in tensors])
    else:
        tensors = [ops.convert_to_tensor(s) for s in scores_list]
        flat = ops.concatenate(
            [ops.reshape(ops.cast(t, "float32"), (-1,)) for t in tensors], axis=0
        )
    sizes = [int(math.prod(t.shape)) for t in tensors]
    total = sum(sizes)
    if allow_empty:
        keep = _num_kept(sparsity, total, 0)
        keep_flat = _keep_top(flat, keep)
    else:
        keep = _num_kept(sparsity, total, sum(1 for size in sizes if size))
        keep_flat = _keep_top(flat, keep, segments=sizes)
    masks, start = [], 0
    for t, size in zip(tensors, sizes):
        part = keep_flat[start : start + size]
        masks.append(part.reshape(t.shape) if host else ops.reshape(part, t.shape))
        start += size
    return masks


def nm_mask(scores, n, m, axis=-2):
    """N:M mask: in every group of ``m`` consecutive entries along ``axis``
    keep the ``n`` with the highest scores.

    For a Keras ``Dense`` kernel ``(in, out)`` or a convolution kernel
    ``(..., in, out)`` the input axis is ``-2``, which matches the layout
    sparse tensor cores expect (groups along the reduction dimension).
    Scores are ranked as everywhere in this module (NaN lowest, ties to the
    lower index); with ``n >= 1`` no group is ever empty.

    Args:
        scores: tensor of rank >= 1.
        n: entries kept per group, ``0 < n < m``.
        m: group size; must divide ``scores.shape[axis]``.
        axis: the axis along which groups are formed.

    Returns:
        A boolean tensor shaped like ``scores`` with exactly ``n`` ``True``
        values in each group.

    Raises:
        ValueError: if ``n >= m``, ``n < 1`` or ``m`` does not divide the
            axis length.
    """
    check_nm(n, m)
    scores = ops.convert_to_tensor(scores)
    rank = len(scores.shape)
    axis = _normalize_axis(axis, rank)
    length = int(scores.shape[axis])
    if length % m:
        raise ValueError(
            f"N:M groups of m={m} must divide the size of axis {axis}, which is "
            f"{length} for a tensor of shape {tuple(scores.shape)}. "
            f"Received: m={m}"
        )
    moved = ops.moveaxis(_order_key(ops.cast(scores, "float32")), axis, -1)
    moved_shape = tuple(moved.shape)
    grouped = ops.reshape(moved, moved_shape[:-1] + (length // m, m))
    keep = _keep_top_n_in_groups(grouped, n, m)
    keep = ops.reshape(keep, moved_shape)
    return ops.moveaxis(keep, -1, axis)


def _order_key(scores):
    """int32 keys of float32 ``scores`` in the module's ranking: ``a`` ranks
    above ``b`` exactly when ``key(a) > key(b)``, and equal scores (``0.0``
    and ``-0.0`` included) have equal keys; every NaN gets the same key,
    below ``-inf``'s.

    Read from the bits, so the ranking is exact for subnormal scores too:
    TensorFlow and XLA on CPU flush subnormals to zero in float comparisons,
    which would make ``1e-40`` and ``2e-40`` ties.
    """
    bits = ops.view(scores, "int32")
    magnitude = ops.bitwise_and(bits, ops.convert_to_tensor(0x7FFFFFFF, "int32"))
    key = ops.where(ops.less(bits, 0), ops.negative(magnitude), magnitude)
    nan = ops.greater(magnitude, ops.convert_to_tensor(0x7F800000, "int32"))
    return ops.where(nan, ops.convert_to_tensor(-0x7FFFFFFF, "int32"), key)


def _keep_top_n_in_groups(grouped, n, m):
    """Boolean mask of the ``n`` highest entries along the last axis (size
    ``m``) of the int32 keys ``grouped`` (:func:`_order_key`), ties kept in
    index order (lower index first), on every backend."""
    if m > 8:
        # The pairwise ranking below costs m times the group's size.
        return _keep_top_along_last(grouped, n)
    # Rank of each entry in its group: the entries ranked higher, plus the
    # equal ones before it.
    mine, other = ops.expand_dims(grouped, -1), ops.expand_dims(grouped, -2)
    position = ops.arange(m)
    before = ops.expand_dims(position, -1) > ops.expand_dims(position, 0)
    beats = ops.logical_or(
        ops.greater(other, mine), ops.logical_and(ops.equal(other, mine), before)
    )
    return ops.sum(ops.cast(beats, "int32"), axis=-1) < n


def check_nm(n, m):
    """Validate an N:M pair (``0 < n < m``), raising ``ValueError``."""
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
               for v in (n, m)):
        raise ValueError(
            f"`n` and `m` must be integers. Received: n={n!r}, m={m!r}"
        )
    if m < 2 or n < 1 or n >= m:
        raise ValueError(
            f"N:M sparsity needs 0 < n < m. Received: n={n}, m={m}"
        )


def _normalize_axis(axis, rank):
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise type_error("axis", axis, "an integer")
    if not -rank <= axis < rank:
        raise ValueError(
            f"`axis` is out of range for a tensor of rank {rank}. "
            f"Received: axis={axis}"
        )
    return axis % rank


def full_block_shape(block_shape, shape):
    """Left-pad ``block_shape`` with ones to the rank of ``shape`` and check
    that every block dimension divides the tensor dimension."""
    if isinstance(block_shape, numbers.Integral):
        block_shape = (block_shape,)
    try:
        block_shape = tuple(int(b) for b in block_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"`block_shape` must be a tuple of positive integers. "
            f"Received: block_shape={block_shape!r}"
        ) from None
    if len(block_shape) > len(shape) or any(b < 1 for b in block_shape):
        raise ValueError(
            f"`block_shape` must have at most {len(shape)} positive entries "
            f"for a tensor of shape {tuple(shape)}. "
            f"Received: block_shape={block_shape}"
        )
    full = (1,) * (len(shape) - len(block_shape)) + block_shape
    if any(d is not None and int(d) % b for d, b in zip(shape, full)):
        raise ValueError(
            f"`block_shape` {full} does not divide the tensor shape "
            f"{tuple(shape)}. Received: block_shape={block_shape}"
        )
    return full


def block_mask(scores, block_shape, sparsity, allow_empty=False):
    """Block mask: whole blocks of ``block_shape`` are kept or removed.

    A block's score is the sum of its entries' scores; the
    ``round(sparsity * n_blocks)`` lowest blocks are removed, at most
    ``n_blocks - 1`` (at least one block is kept) unless ``allow_empty``.
    A block holding a NaN (or both infinities) scores NaN and goes first.

    Args:
        scores: tensor of any rank.
        block_shape: tuple of block sizes; shorter tuples are left-padded
            with ones (so ``(4, 4)`` on a ``(3, 3, 64, 64)`` kernel means
            4x4 blocks over the last two axes). Each entry must divide the
            matching dimension.
        sparsity: fraction of blocks to remove, in ``[0, 1)``; inside
            ``tf.function``/``jax.jit`` also a scalar tensor.
        allow_empty: let every block be removed.

    Returns:
        A boolean tensor shaped like ``scores``.
    """
    scores = ops.convert_to_tensor(scores)
    shape = tuple(int(d) for d in scores.shape)
    full = full_block_shape(block_shape, shape)
    split = []
    for d, b in zip(shape, full):
        split += [d // b, b]
    blocks = ops.sum(
        ops.reshape(ops.cast(scores, "float32"), split),
        axis=tuple(range(1, 2 * len(shape), 2)),
    )
    keep = topk_mask(blocks, sparsity, allow_empty=allow_empty)
    for axis, b in enumerate(full):
        if b > 1:
            keep = ops.repeat(keep, b, axis=axis)
    return keep


def channel_mask(scores, sparsity, axes=(-1,), allow_empty=False):
    """Structured mask keeping whole output units (neurons / filters).

    A unit's score is the sum of the scores over every axis not in
    ``axes``; the ``round(sparsity * n_units)`` lowest units are removed
    (at most ``n_units - 1``: at least one unit is kept unless
    ``allow_empty``) and the decision is broadcast back to the full tensor.

    Args:
        scores: tensor of any rank.
        sparsity: fraction of units to remove, in ``[0, 1)``; inside
            ``tf.function``/``jax.jit`` also a scalar tensor.
        axes: the axes that index a unit (``(-1,)`` for Dense and Conv
            kernels).
        allow_empty: let every unit be removed.

    Returns:
        A boolean tensor shaped like ``scores``.
    """
    check_bool(allow_empty, "allow_empty")
    scores = ops.convert_to_tensor(scores)
    rank = len(scores.shape)
    axes = tuple(sorted(_normalize_axis(a, rank) for a in axes))
    reduce_axes = tuple(a for a in range(rank) if a not in axes)
    unit_scores = ops.cast(scores, "float32")
    if reduce_axes:
        unit_scores = ops.sum(unit_scores, axis=reduce_axes, keepdims=True)
    keep = topk_mask(unit_scores, sparsity, allow_empty=allow_empty)
    return ops.broadcast_to(keep, scores.shape)


def mask_sparsity(mask):
    """Fraction of ``False`` entries in a mask, as a Python float."""
    if mask is None or isinstance(mask, (str, bytes, dict)):
        raise type_error("mask", mask, "a boolean tensor or array")
    mask = ops.convert_to_tensor(mask)
    n = int(math.prod(mask.shape))
    if n == 0:
        return 0.0
    kept = float(ops.convert_to_numpy(ops.sum(ops.cast(mask, "int32"))))
    return 1.0 - kept / n
