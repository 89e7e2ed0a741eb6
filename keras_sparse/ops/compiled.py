"""Mask functions for compiled (traced) mask updates.

The functions of :mod:`keras_sparse.ops.masks` read the threshold on the
host (a vectorized ``np.sort``), which is the fastest way to update a mask
eagerly but forces a device-to-host copy and a sync in the middle of
training. The functions here compute the same masks with ``keras.ops``
only, with static shapes, and take the number of entries to keep as a
*tensor* argument, so a traced function (``tf.function``, ``jax.jit``)
built from them is traced once and serves every sparsity of a schedule.

Same masks, bit for bit, as :func:`~keras_sparse.ops.masks.topk_mask` and
:func:`~keras_sparse.ops.masks.global_topk_masks`, with their rules: the
``keep`` highest-ranked scores are kept, ties at the threshold to the lower
flat index (``-0.0`` and ``0.0`` are equal, as for numpy), ``NaN`` ranked
lowest (below ``-inf``), and (with :func:`keep_count`'s default) at least
one entry kept, in a global group at least one per tensor (its best).

The threshold is found by radix selection on an order-preserving integer
view of the float32 scores (passes of 8- or 16-bit digits, each a
histogram of the candidates left), not by sorting: a radix pass costs a few
elementwise passes, a sort in a TensorFlow graph far more (see
``benchmarks/README.md``).
"""

import math

from keras import ops

from keras_sparse.ops.masks import _best_one_hot
from keras_sparse.ops.masks import check_sparsity

__all__ = [
    "keep_count",
    "topk_mask_dynamic",
    "global_topk_masks_dynamic",
]

#: Up to this many scores, the radix digits have 8 bits (4 passes over
#: 256-bin histograms); above, 16 bits (2 passes over 65536 bins).
SMALL_SIZE = 1 << 17


_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


def keep_count(sparsity, n, min_keep=1):
    """Entries kept out of ``n`` at ``sparsity``: ``n - round(sparsity * n)``
    (Python's rounding, as the eager mask functions), at least ``min_keep``
    (1: the mask functions' default; 0 with ``allow_empty``; the number of
    non-empty tensors for a global group)."""
    removed = int(round(check_sparsity(sparsity) * n))
    return n - min(removed, max(n - min_keep, 0))


def _ordered_keys(flat_scores, forced=None):
    """int32 keys ordered as the float32 scores (``-0.0`` mapped to ``0.0``;
    for negative floats the lower 31 bits are flipped). ``NaN`` gets the
    lowest key (below ``-inf``) and ``forced`` entries the highest (above
    ``+inf``)."""
    values = ops.cast(flat_scores, "float32")
    # A select, not ``+ 0.0`` (which graph optimizers fold away).
    values = ops.where(ops.equal(values, 0.0), ops.zeros((), "float32"), values)
    bits = ops.view(values, "int32")
    flipped = ops.bitwise_xor(bits, ops.convert_to_tensor(0x7FFFFFFF, "int32"))
    keys = ops.where(ops.less(bits, 0), flipped, bits)
    keys = ops.where(ops.isnan(values), ops.convert_to_tensor(_INT32_MIN, "int32"), keys)
    if forced is not None:
        keys = ops.where(forced, ops.convert_to_tensor(_INT32_MAX, "int32"), keys)
    return keys


def _keep_top_dynamic(flat_scores, keep, forced=None):
    """Boolean mask over 1-D ``flat_scores`` keeping the ``keep`` (a scalar
    integer tensor) highest-ranked, ties to the lower index; ``forced``
    entries rank first."""
    keys = _ordered_keys(flat_scores, forced)
    need = ops.cast(ops.reshape(keep, ()), "int32")
    n = int(keys.shape[0])
    # Histograms no larger than the scores: 8-bit digits (4 passes) for
    # small tensors, 16-bit digits (2 passes) for large ones.
    digit_bits = 8 if n <= SMALL_SIZE else 16
    bins = 1 << digit_bits
    digit_mask = ops.convert_to_tensor(bins - 1, "int32")
    # Unsigned order: flip the sign bit (the digits are taken with an
    # arithmetic shift and a mask, so the sign extension never shows).
    unsigned = ops.bitwise_xor(keys, ops.convert_to_tensor(-(2**31), "int32"))
    match = ops.ones_like(keys, dtype="bool")
    greater = ops.zeros_like(keys, dtype="bool")
    for shift in range(32 - digit_bits, -1, -digit_bits):
        digits = ops.bitwise_and(ops.right_shift(unsigned, shift), digit_mask)
        hist = ops.bincount(
            ops.reshape(digits, (-1,)),
            weights=ops.cast(match, "int32"),
            minlength=bins,
        )
        hist = ops.cast(ops.reshape(hist[:bins], (bins,)), "int32")
        # at_least[d]: candidates whose digit is >= d (non-increasing in d).
        at_least = ops.flip(ops.cumsum(ops.flip(hist, 0)), 0)
        # The threshold's digit: the largest d with at_least[d] >= need.
        digit = ops.sum(ops.cast(ops.greater_equal(at_least, need), "int32")) - 1
        digit = ops.maximum(digit, 0)
        above = ops.take(ops.concatenate([at_least, ops.zeros((1,), "int32")]), digit + 1)
        need = need - above
        greater = ops.logical_or(greater, ops.logical_and(match, ops.greater(digits, digit)))
        match = ops.logical_and(match, ops.equal(digits, digit))
    # ``match``: entries equal to the threshold; ``need`` of them are kept,
    # in index order.
    rank = ops.cumsum(ops.cast(match, "int32"))
    return ops.logical_or(greater, ops.logical_and(match, ops.less_equal(rank, need)))


def topk_mask_dynamic(scores, keep):
    """Unstructured mask keeping the ``keep`` largest scores of one tensor,
    with ``keep`` a scalar integer tensor (see :func:`keep_count`): the mask
    :func:`keras_sparse.ops.masks.topk_mask` gives at the sparsity ``keep``
    was computed from, with no shape or trace depending on ``keep``.

    Example:
    >>> topk_mask_dynamic(np.array([[0.1, 3.0], [2.0, 0.5]]), keep_count(0.5, 4))
    [[False, True], [True, False]]
    """
    scores = ops.convert_to_tensor(scores)
    flat = _keep_top_dynamic(ops.reshape(scores, (-1,)), keep)
    return ops.reshape(flat, scores.shape)


def global_topk_masks_dynamic(scores_list, keep, allow_empty=False):
    """One threshold across several tensors keeping ``keep`` (a scalar
    integer tensor, ``keep_count(sparsity, total, T)`` for ``T`` non-empty
    tensors) entries in all: the masks of
    :func:`keras_sparse.ops.masks.global_topk_masks` (ties by position in
    the concatenation; each tensor keeps its best entry unless
    ``allow_empty``)."""
    tensors = [ops.convert_to_tensor(s) for s in scores_list]
    if not tensors:
        return []
    sizes = [int(math.prod(t.shape)) for t in tensors]
    parts = [ops.reshape(ops.cast(t, "float32"), (-1,)) for t in tensors]
    flat = ops.concatenate(parts, 0)
    forced = None
    if not allow_empty:
        # Each tensor's best entry first: the at-least-one rule of
        # global_topk_masks (``keep`` counts them: keep_count(s, total, T)).
        forced = ops.concatenate(
            [_best_one_hot(part) if size else ops.zeros((0,), "bool")
             for part, size in zip(parts, sizes)], 0)
    keep_flat = _keep_top_dynamic(flat, keep, forced)
    masks, start = [], 0
    for t, size in zip(tensors, sizes):
        masks.append(ops.reshape(keep_flat[start : start + size], t.shape))
        start += size
    return masks
