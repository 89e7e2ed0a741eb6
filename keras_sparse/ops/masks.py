"""Mask functions: scores in, boolean keep-mask out.

Every function here is pure math on tensors written with ``keras.ops``: it
accepts numpy arrays or backend tensors, returns a boolean tensor of the same
shape as ``scores`` (``True`` = keep), and knows nothing about layers.

Conventions shared by all functions:

* A higher score means "more important, keep first".
* ``sparsity`` is the fraction of entries (or groups) to remove. The number
  removed is ``round(sparsity * count)``, so the result is within half an
  entry of the target.
* Ties are broken deterministically: among equal scores the entry with the
  lower flat (row-major) index is kept.
"""

import math
import numbers

import numpy as np
from keras import ops

from keras_sparse import backend

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


def _num_pruned(sparsity, count):
    return int(round(check_sparsity(sparsity) * count))


def _keep_top(flat_scores, keep):
    """Boolean mask over a 1-D tensor keeping the ``keep`` largest entries.

    Eagerly, the threshold (the ``keep``-th largest value) is read on the
    host with a vectorized sort and ties at the threshold are filled in index
    order: no traced shape depends on ``keep`` (no recompilation as a
    schedule moves) and an update costs a fraction of a device top-k. Inside
    ``tf.function``/``jax.jit`` a top-k gives the same mask.
    """
    n = int(flat_scores.shape[0])
    if keep >= n:
        return ops.ones((n,), dtype="bool")
    if keep <= 0:
        return ops.zeros((n,), dtype="bool")
    scores = ops.cast(flat_scores, "float32")
    if backend.is_traced(scores):
        # Compiled callers: top-k keeps the lower index among equal values.
        _, indices = ops.top_k(scores, keep, sorted=True)
        hits = ops.scatter(
            ops.expand_dims(indices, -1), ops.ones((keep,), dtype="int32"), (n,)
        )
        return ops.greater(hits, 0)
    values = np.asarray(ops.convert_to_numpy(scores), dtype=np.float32)
    # A full SIMD sort is faster than partition here: pruned kernels hold
    # many exact zeros, on which selection algorithms degrade.
    threshold = np.sort(values)[n - keep]
    keep_mask = values > threshold
    missing = keep - int(np.count_nonzero(keep_mask))
    if missing:
        keep_mask[np.flatnonzero(values == threshold)[:missing]] = True
    return ops.convert_to_tensor(keep_mask)


def topk_mask(scores, sparsity):
    """Unstructured mask keeping the largest scores of one tensor.

    .. math::
        m_i = [\\,\\mathrm{rank}(s_i) < n - \\mathrm{round}(\\rho\\,n)\\,]

    Args:
        scores: tensor of any shape.
        sparsity: fraction of entries to remove, in ``[0, 1)``.

    Returns:
        A boolean tensor shaped like ``scores``.

    Example:
    >>> topk_mask(np.array([[0.1, 3.0], [2.0, 0.5]]), 0.5)
    [[False, True], [True, False]]
    """
    scores = ops.convert_to_tensor(scores)
    n = int(math.prod(scores.shape))
    keep = n - _num_pruned(sparsity, n)
    flat = _keep_top(ops.reshape(scores, (-1,)), keep)
    return ops.reshape(flat, scores.shape)


def global_topk_masks(scores_list, sparsity):
    """Masks for several tensors from one threshold across all of them.

    The ``round(sparsity * total)`` lowest scores over the concatenation of
    every tensor are removed, so layers compete for the kept budget
    (global magnitude pruning). Ties are broken by position in the
    concatenation (earlier tensors first).

    Args:
        scores_list: list of tensors of any shapes.
        sparsity: fraction of all entries to remove, in ``[0, 1)``.

    Returns:
        A list of boolean tensors shaped like the inputs.
    """
    tensors = [ops.convert_to_tensor(s) for s in scores_list]
    if not tensors:
        return []
    sizes = [int(math.prod(t.shape)) for t in tensors]
    flat = ops.concatenate(
        [ops.reshape(ops.cast(t, "float32"), (-1,)) for t in tensors], axis=0
    )
    total = sum(sizes)
    keep_flat = _keep_top(flat, total - _num_pruned(sparsity, total))
    masks, start = [], 0
    for t, size in zip(tensors, sizes):
        masks.append(ops.reshape(keep_flat[start : start + size], t.shape))
        start += size
    return masks


def nm_mask(scores, n, m, axis=-2):
    """N:M mask: in every group of ``m`` consecutive entries along ``axis``
    keep the ``n`` with the highest scores.

    For a Keras ``Dense`` kernel ``(in, out)`` or a convolution kernel
    ``(..., in, out)`` the input axis is ``-2``, which matches the layout
    sparse tensor cores expect (groups along the reduction dimension).

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
    moved = ops.moveaxis(ops.cast(scores, "float32"), axis, -1)
    moved_shape = tuple(moved.shape)
    grouped = ops.reshape(moved, moved_shape[:-1] + (length // m, m))
    keep = _keep_top_n_in_groups(grouped, n, m)
    keep = ops.reshape(keep, moved_shape)
    return ops.moveaxis(keep, -1, axis)


def _keep_top_n_in_groups(grouped, n, m):
    """Boolean mask of the ``n`` largest entries along the last axis (size
    ``m``), ties kept in index order (lower index first) on every backend."""
    if m > 8 and backend.name() != "torch":
        # TensorFlow's and JAX's top-k keep the lower index among ties.
        _, idx = ops.top_k(grouped, n, sorted=True)
        return ops.sum(ops.one_hot(idx, m, dtype="int32"), axis=-2) > 0
    # Rank of each entry in its group: the entries scoring higher, plus the
    # equal ones before it (torch's top-k leaves the order of ties open). The
    # pairwise comparison costs m times the group's size, so larger groups on
    # the other backends use their top-k.
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
    if any(int(d) % b for d, b in zip(shape, full)):
        raise ValueError(
            f"`block_shape` {full} does not divide the tensor shape "
            f"{tuple(shape)}. Received: block_shape={block_shape}"
        )
    return full


def block_mask(scores, block_shape, sparsity):
    """Block mask: whole blocks of ``block_shape`` are kept or removed.

    A block's score is the sum of its entries' scores; the
    ``round(sparsity * n_blocks)`` lowest blocks are removed.

    Args:
        scores: tensor of any rank.
        block_shape: tuple of block sizes; shorter tuples are left-padded
            with ones (so ``(4, 4)`` on a ``(3, 3, 64, 64)`` kernel means
            4x4 blocks over the last two axes). Each entry must divide the
            matching dimension.
        sparsity: fraction of blocks to remove, in ``[0, 1)``.

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
    keep = topk_mask(blocks, sparsity)
    for axis, b in enumerate(full):
        if b > 1:
            keep = ops.repeat(keep, b, axis=axis)
    return keep


def channel_mask(scores, sparsity, axes=(-1,)):
    """Structured mask keeping whole output units (neurons / filters).

    A unit's score is the sum of the scores over every axis not in
    ``axes``; the ``round(sparsity * n_units)`` lowest units are removed and
    the decision is broadcast back to the full tensor.

    Args:
        scores: tensor of any rank.
        sparsity: fraction of units to remove, in ``[0, 1)``.
        axes: the axes that index a unit (``(-1,)`` for Dense and Conv
            kernels).

    Returns:
        A boolean tensor shaped like ``scores``.
    """
    scores = ops.convert_to_tensor(scores)
    rank = len(scores.shape)
    axes = tuple(sorted(_normalize_axis(a, rank) for a in axes))
    reduce_axes = tuple(a for a in range(rank) if a not in axes)
    unit_scores = ops.cast(scores, "float32")
    if reduce_axes:
        unit_scores = ops.sum(unit_scores, axis=reduce_axes, keepdims=True)
    keep = topk_mask(unit_scores, sparsity)
    return ops.broadcast_to(keep, scores.shape)


def mask_sparsity(mask):
    """Fraction of ``False`` entries in a mask, as a Python float."""
    mask = ops.convert_to_tensor(mask)
    n = int(math.prod(mask.shape))
    if n == 0:
        return 0.0
    kept = float(ops.convert_to_numpy(ops.sum(ops.cast(mask, "int32"))))
    return 1.0 - kept / n
