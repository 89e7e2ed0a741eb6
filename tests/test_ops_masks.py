"""Floor-1 mask functions against numpy references written here.

Conventions under test (``keras_sparse/ops/masks.py``): ``True`` = keep, a
higher score is kept first, ``round(sparsity * count)`` entries (or groups)
are removed but at least one is kept (unless ``allow_empty``), NaN ranks
lowest, and among equal scores the lower flat index is kept.
"""

import math

import keras
import numpy as np
import pytest
from conftest import to_np
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_sparse import ops as ks_ops
from keras_sparse.ops import masks as mask_ops

# ---------------------------------------------------------------------------
# numpy references


def ref_order(flat):
    """Indices of a 1-D array from the highest-ranked entry down: NaN last,
    then -inf, ..., +inf first; equal scores (NaNs too) by index."""
    flat = np.asarray(flat, dtype=np.float64)
    nan = np.isnan(flat)
    # lexsort: the last key is the primary one.
    return np.lexsort((np.arange(flat.size), -np.where(nan, 0.0, flat), nan))


def ref_keep_top(flat, keep):
    """Keep the ``keep`` highest-ranked entries of a 1-D array."""
    order = ref_order(flat)
    mask = np.zeros(order.size, dtype=bool)
    mask[order[: max(keep, 0)]] = True
    return mask


def ref_topk(scores, sparsity, allow_empty=False):
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    keep = n - n_removed(sparsity, n, allow_empty)
    return ref_keep_top(scores.reshape(-1), keep).reshape(scores.shape)


def ref_global(scores_list, sparsity, allow_empty=False):
    """Each non-empty tensor first keeps its best entry (unless
    ``allow_empty``), then the rest of the budget goes by global rank."""
    flat = np.concatenate([np.asarray(s, np.float64).reshape(-1) for s in scores_list])
    sizes = [int(np.prod(np.shape(s))) for s in scores_list]
    if allow_empty:
        keep = ref_topk(flat, sparsity, allow_empty=True)
    else:
        keep = np.zeros(flat.size, dtype=bool)
        start = 0
        for size in sizes:
            if size:
                keep[start + ref_order(flat[start : start + size])[0]] = True
            start += size
        reserved = int(keep.sum())
        removed = min(int(round(sparsity * flat.size)), flat.size - reserved)
        budget = flat.size - removed - reserved
        rest = [i for i in ref_order(flat) if not keep[i]]
        keep[rest[:budget]] = True
    out, start = [], 0
    for s in scores_list:
        size = int(np.prod(np.shape(s)))
        out.append(keep[start : start + size].reshape(np.shape(s)))
        start += size
    return out


def ref_nm(scores, n, m, axis):
    scores = np.asarray(scores, dtype=np.float64)
    moved = np.moveaxis(scores, axis, -1)
    groups = moved.reshape(-1, m)
    keep = np.zeros_like(groups, dtype=bool)
    for g in range(groups.shape[0]):
        keep[g] = ref_keep_top(groups[g], n)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def ref_block(scores, block_shape, sparsity, allow_empty=False):
    scores = np.asarray(scores, dtype=np.float64)
    full = (1,) * (scores.ndim - len(block_shape)) + tuple(block_shape)
    split = []
    for d, b in zip(scores.shape, full):
        split += [d // b, b]
    sums = scores.reshape(split).sum(axis=tuple(range(1, 2 * scores.ndim, 2)))
    keep = ref_topk(sums, sparsity, allow_empty)
    for axis, b in enumerate(full):
        keep = np.repeat(keep, b, axis=axis)
    return keep


def ref_channel(scores, sparsity, axes, allow_empty=False):
    scores = np.asarray(scores, dtype=np.float64)
    axes = {a % scores.ndim for a in axes}
    reduce = tuple(a for a in range(scores.ndim) if a not in axes)
    units = scores.sum(axis=reduce, keepdims=True) if reduce else scores
    return np.broadcast_to(ref_topk(units, sparsity, allow_empty), scores.shape)


def n_removed(sparsity, n, allow_empty=False):
    """``round(sparsity * n)``, capped at ``n - 1`` unless ``allow_empty``."""
    removed = int(round(sparsity * n))
    return removed if allow_empty else min(removed, max(n - 1, 0))


# ---------------------------------------------------------------------------
# topk_mask

SHAPES = [(17,), (6, 5), (3, 4, 5), (2, 3, 4, 5)]
SPARSITIES = [0.0, 0.1, 0.25, 0.5, 0.73, 0.9, 0.999]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_topk_matches_reference(rng, shape, sparsity):
    scores = rng.normal(size=shape).astype("float32")
    mask = to_np(ks_ops.topk_mask(scores, sparsity))
    assert mask.shape == shape
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, ref_topk(scores, sparsity))
    assert int((~mask).sum()) == n_removed(sparsity, scores.size)


def test_topk_keeps_largest(rng):
    scores = rng.permutation(100).astype("float32").reshape(10, 10)
    mask = to_np(ks_ops.topk_mask(scores, 0.3))
    np.testing.assert_array_equal(mask, scores >= 30)


def test_topk_docstring_example():
    mask = to_np(ks_ops.topk_mask(np.array([[0.1, 3.0], [2.0, 0.5]]), 0.5))
    np.testing.assert_array_equal(mask, [[False, True], [True, False]])


def test_topk_accepts_backend_tensor(rng):
    scores = rng.normal(size=(4, 6)).astype("float32")
    mask = ks_ops.topk_mask(keras.ops.convert_to_tensor(scores), 0.5)
    np.testing.assert_array_equal(to_np(mask), ref_topk(scores, 0.5))


def test_topk_ties_keep_lower_flat_index():
    scores = np.ones((3, 4), dtype="float32")
    mask = to_np(ks_ops.topk_mask(scores, 0.5))
    np.testing.assert_array_equal(mask.reshape(-1), np.arange(12) < 6)


def test_topk_ties_mixed_with_distinct_values():
    scores = np.array([2.0, 1.0, 1.0, 3.0, 1.0, 0.0, 1.0], dtype="float32")
    # Remove round(0.5 * 7) = 4 (banker's rounding of 3.5): keep 3.0, 2.0 and
    # the first 1.0 (index 1).
    mask = to_np(ks_ops.topk_mask(scores, 0.5))
    np.testing.assert_array_equal(mask, [True, True, False, True, False, False, False])


def test_topk_sparsity_zero_keeps_everything(rng):
    scores = rng.normal(size=(5, 7))
    assert to_np(ks_ops.topk_mask(scores, 0.0)).all()


def test_topk_near_one_keeps_only_the_maximum(rng):
    scores = rng.normal(size=(1000,)).astype("float32")
    mask = to_np(ks_ops.topk_mask(scores, 0.999))
    assert mask.sum() == 1
    assert mask[np.argmax(scores)]


def test_topk_near_one_small_tensor_keeps_one():
    # round(0.999 * 10) = 10 is capped at 9: the best entry stays.
    mask = to_np(ks_ops.topk_mask(np.arange(10.0), 0.999))
    np.testing.assert_array_equal(mask, np.arange(10) == 9)
    # Unless empty masks are asked for.
    mask = to_np(ks_ops.topk_mask(np.arange(10.0), 0.999, allow_empty=True))
    assert not mask.any()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_topk_low_precision_scores(rng, dtype):
    values = rng.normal(size=(8, 16)).astype("float32")
    scores = keras.ops.convert_to_tensor(values, dtype=dtype)
    mask = to_np(ks_ops.topk_mask(scores, 0.6))
    # The reference sees the scores as the low-precision tensor holds them, so
    # values that collapsed to the same number are ties broken by index.
    np.testing.assert_array_equal(mask, ref_topk(to_np(scores), 0.6))
    assert int((~mask).sum()) == n_removed(0.6, values.size)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_topk_low_precision_collapsed_ties(dtype):
    # 1.0, 1.0001, 1.0002, ... are all 1.0 in float16 and bfloat16.
    values = (1.0 + 1e-4 * np.arange(8)).astype("float32")[::-1].copy()
    scores = keras.ops.convert_to_tensor(values, dtype=dtype)
    mask = to_np(ks_ops.topk_mask(scores, 0.5))
    np.testing.assert_array_equal(mask, np.arange(8) < 4)


def test_topk_invalid_sparsity_raises():
    with pytest.raises(ValueError, match="1.0"):
        ks_ops.topk_mask(np.ones(4), 1.0)


score_arrays = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
    elements=st.one_of(
        st.integers(0, 4).map(float),  # many ties
        st.floats(0.0, 100.0, width=32, allow_subnormal=False),
    ),
).map(lambda a: a + np.float32(0.0))  # no -0.0


@settings(max_examples=40)
@given(scores=score_arrays, sparsity=st.floats(0.0, 0.99))
def test_topk_properties(scores, sparsity):
    mask = to_np(ks_ops.topk_mask(scores, sparsity))
    assert mask.shape == scores.shape
    # Exact count.
    assert int((~mask).sum()) == n_removed(sparsity, scores.size)
    # Every kept score is >= every removed score.
    if mask.any() and (~mask).any():
        assert scores[mask].min() >= scores[~mask].max()
    # Ties broken as the reference does.
    np.testing.assert_array_equal(mask, ref_topk(scores, sparsity))
    # Idempotent: masking the (non-negative) scores and pruning again at the
    # same sparsity returns the same mask.
    again = to_np(ks_ops.topk_mask(scores * mask, sparsity))
    np.testing.assert_array_equal(again, mask)


# ---------------------------------------------------------------------------
# global_topk_masks


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.95])
def test_global_matches_concatenation_reference(rng, sparsity):
    scores = [
        rng.normal(size=(8, 4)).astype("float32"),
        rng.normal(size=(3, 3, 2, 5)).astype("float32"),
        rng.normal(size=(7,)).astype("float32"),
    ]
    masks = [to_np(m) for m in ks_ops.global_topk_masks(scores, sparsity)]
    expected = ref_global(scores, sparsity)
    assert len(masks) == len(scores)
    for got, want, s in zip(masks, expected, scores):
        assert got.shape == s.shape
        np.testing.assert_array_equal(got, want)
    total = sum(s.size for s in scores)
    removed = sum(int((~m).sum()) for m in masks)
    assert removed == n_removed(sparsity, total)


def test_global_budget_is_shared_across_tensors():
    small = np.full((4, 4), 0.1, dtype="float32")
    large = np.full((4, 4), 5.0, dtype="float32")
    masks = ks_ops.global_topk_masks([small, large], 0.5, allow_empty=True)
    # Half of all 32 entries go, and they all come from the low-scoring tensor.
    assert not to_np(masks[0]).any()
    assert to_np(masks[1]).all()
    # By default the low-scoring tensor keeps its first entry, taken from the
    # lowest-ranked entry kept in the other (its last, by index order).
    small_mask, large_mask = [to_np(m) for m in ks_ops.global_topk_masks([small, large], 0.5)]
    np.testing.assert_array_equal(small_mask.reshape(-1), np.arange(16) == 0)
    np.testing.assert_array_equal(large_mask.reshape(-1), np.arange(16) != 15)


def test_global_differs_from_per_tensor(rng):
    a = rng.normal(size=(10, 10)).astype("float32")
    b = 10.0 * rng.normal(size=(10, 10)).astype("float32")
    ga, gb = [to_np(m) for m in ks_ops.global_topk_masks([np.abs(a), np.abs(b)], 0.5)]
    # Per-tensor top-k would remove 50 from each; the shared threshold removes
    # more from the tensor with small scores.
    assert (~ga).sum() > 50 > (~gb).sum()
    assert (~ga).sum() + (~gb).sum() == 100


def test_global_ties_prefer_earlier_tensor():
    masks = ks_ops.global_topk_masks([np.ones(3), np.ones(3)], 0.5, allow_empty=True)
    np.testing.assert_array_equal(to_np(masks[0]), [True, True, True])
    np.testing.assert_array_equal(to_np(masks[1]), [False, False, False])
    # Each tensor keeps its first entry; the third kept one goes by index.
    masks = ks_ops.global_topk_masks([np.ones(3), np.ones(3)], 0.5)
    np.testing.assert_array_equal(to_np(masks[0]), [True, True, False])
    np.testing.assert_array_equal(to_np(masks[1]), [True, False, False])


def test_global_mixed_dtypes(rng):
    a = rng.normal(size=(6,)).astype("float32")
    b = keras.ops.convert_to_tensor(rng.normal(size=(2, 5)), dtype="float16")
    masks = ks_ops.global_topk_masks([a, b], 0.4)
    expected = ref_global([a, to_np(b)], 0.4)
    for got, want in zip(masks, expected):
        np.testing.assert_array_equal(to_np(got), want)


def test_global_empty_list():
    assert ks_ops.global_topk_masks([], 0.5) == []


# ---------------------------------------------------------------------------
# nm_mask

NM_CASES = [(1, 2), (2, 4), (1, 4), (3, 4), (4, 8)]


@pytest.mark.parametrize("n,m", NM_CASES)
@pytest.mark.parametrize(
    "shape,axis",
    [((16, 6), -2), ((6, 16), -1), ((3, 3, 8, 5), -2), ((3, 3, 5, 8), -1), ((16,), 0)],
    ids=str,
)
def test_nm_matches_reference(rng, n, m, shape, axis):
    scores = rng.normal(size=shape).astype("float32")
    mask = to_np(ks_ops.nm_mask(scores, n, m, axis=axis))
    assert mask.shape == shape
    np.testing.assert_array_equal(mask, ref_nm(scores, n, m, axis))
    # Exactly n kept in every group of m consecutive entries along the axis.
    groups = np.moveaxis(mask, axis, -1).reshape(-1, m)
    np.testing.assert_array_equal(groups.sum(axis=1), n)
    assert mask.sum() == mask.size * n // m


def test_nm_default_axis_is_input_axis():
    # Dense kernel (in=4, out=2): groups run down the columns.
    scores = np.array([[1.0, 8.0], [4.0, 7.0], [3.0, 6.0], [2.0, 5.0]], dtype="float32")
    mask = to_np(ks_ops.nm_mask(scores, 2, 4))
    np.testing.assert_array_equal(
        mask, [[False, True], [True, True], [True, False], [False, False]]
    )


def test_nm_keeps_group_top_n():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 4.0, 3.0, 2.0, 1.0], dtype="float32")
    mask = to_np(ks_ops.nm_mask(scores, 2, 4, axis=0))
    np.testing.assert_array_equal(mask, [False, True, False, True, True, True, False, False])


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (6, 12)])
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_nm_ranks_subnormal_scores_exactly(n, m, traced):
    # TensorFlow and XLA on CPU flush subnormals to zero when comparing
    # floats; the ranking must not see 1e-40 < 2e-40 as a tie. Small groups
    # rank pairwise, large ones (m > 8) through a sort: both are covered.
    base = np.array([1e-40, 3e-40, 2e-40, 4e-40], "float32")
    assert np.all(base > 0) and len(set(base.tolist())) == 4  # really subnormal, distinct
    group = np.concatenate([base, -base, [0.0, -0.0, 5e-45, -5e-45]])[:m].astype("float32")
    scores = np.stack([group, group[::-1]], axis=-1)  # two columns, groups along axis 0
    expected = np.zeros_like(scores, bool)
    for column in range(2):
        # Stable: among equal scores (0.0 and -0.0) the lower index first.
        order = np.argsort(-scores[:, column].astype("float64"), kind="stable")[:n]
        expected[order, column] = True
    fn = lambda s: ks_ops.nm_mask(s, n, m, axis=0)  # noqa: E731
    backend = keras.backend.backend()
    if traced and backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(fn, jit_compile=True)
    elif traced and backend == "jax":
        import jax

        fn = jax.jit(fn)
    elif traced:
        pytest.skip(f"no jit trace on backend {backend}")
    np.testing.assert_array_equal(to_np(fn(scores)), expected)
    if m == 4:
        # The example of the report: the two largest of four subnormals.
        mask = to_np(ks_ops.nm_mask(base[:, None], 2, 4, axis=0))[:, 0]
        np.testing.assert_array_equal(mask, [False, True, False, True])


@pytest.mark.parametrize("n,m", [(2, 4), (3, 8), (4, 16)])
def test_nm_ties_keep_lower_index(n, m):
    # Small groups rank entries pairwise, large ones use a top-k: both keep
    # the first n of equal scores, on every backend.
    mask = to_np(ks_ops.nm_mask(np.ones((2 * m, 3)), n, m, axis=0))
    group = [1] * n + [0] * (m - n)
    np.testing.assert_array_equal(mask[:, 0], group * 2)
    assert (mask == mask[:, :1]).all()
    group = np.array([0.5, 0.5, 0.9] + [0.1] * (m - 3), "float32")
    expected = np.zeros(m, bool)
    expected[np.argsort(-group, kind="stable")[:n]] = True  # n=2 keeps 0.9 and the first 0.5
    mask = to_np(ks_ops.nm_mask(np.tile(group, 2)[:, None], n, m, axis=0))[:, 0]
    np.testing.assert_array_equal(mask, np.tile(expected, 2))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_nm_low_precision(rng, dtype):
    scores = keras.ops.convert_to_tensor(rng.normal(size=(8, 4)), dtype=dtype)
    mask = to_np(ks_ops.nm_mask(scores, 2, 4))
    np.testing.assert_array_equal(mask, ref_nm(to_np(scores), 2, 4, -2))


def test_nm_m_must_divide_axis():
    with pytest.raises(ValueError, match="m=4"):
        ks_ops.nm_mask(np.ones((6, 8)), 2, 4, axis=-2)


@pytest.mark.parametrize("n,m", [(4, 4), (5, 4), (0, 4), (-1, 4), (1, 1)])
def test_nm_invalid_n_m(n, m):
    with pytest.raises(ValueError, match=f"n={n}"):
        ks_ops.nm_mask(np.ones((8, 8)), n, m)


@pytest.mark.parametrize("n,m", [(2.0, 4), (2, 4.0), (True, 4), ("2", 4)])
def test_nm_non_integer_n_m(n, m):
    with pytest.raises(ValueError, match="integers"):
        ks_ops.nm_mask(np.ones((8, 8)), n, m)


def test_nm_axis_out_of_range():
    with pytest.raises(ValueError, match="axis=2"):
        ks_ops.nm_mask(np.ones((8, 8)), 2, 4, axis=2)


@settings(max_examples=25)
@given(
    nm=st.sampled_from(NM_CASES),
    groups=st.integers(1, 3),
    other=st.integers(1, 4),
    data=st.data(),
)
def test_nm_properties(nm, groups, other, data):
    n, m = nm
    scores = data.draw(
        hnp.arrays(np.float32, (groups * m, other), elements=st.integers(0, 3).map(float))
    )
    mask = to_np(ks_ops.nm_mask(scores, n, m, axis=0))
    np.testing.assert_array_equal(mask, ref_nm(scores, n, m, 0))
    per_group = mask.reshape(groups, m, other)
    np.testing.assert_array_equal(per_group.sum(axis=1), n)
    # Within a group every kept score is >= every removed one.
    s = scores.reshape(groups, m, other)
    kept_min = np.where(per_group, s, np.inf).min(axis=1)
    removed_max = np.where(per_group, -np.inf, s).max(axis=1)
    assert (kept_min >= removed_max).all()


# ---------------------------------------------------------------------------
# block_mask


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize(
    "shape,block",
    [((8, 12), (2, 3)), ((8, 12), (4, 1)), ((3, 3, 8, 8), (4, 4)), ((16,), (4,)), ((4, 6, 8), (2,))],
    ids=str,
)
def test_block_matches_reference(rng, shape, block, sparsity):
    scores = rng.normal(size=shape).astype("float32")
    mask = to_np(ks_ops.block_mask(scores, block, sparsity))
    assert mask.shape == shape
    np.testing.assert_array_equal(mask, ref_block(scores, block, sparsity))

    # Whole blocks: every block is constant, and the removed count is exact.
    full = (1,) * (len(shape) - len(block)) + tuple(block)
    split = []
    for d, b in zip(shape, full):
        split += [d // b, b]
    blocked = mask.reshape(split)
    inner = tuple(range(1, 2 * len(shape), 2))
    assert (blocked.all(axis=inner) == blocked.any(axis=inner)).all()
    n_blocks = math.prod(d // b for d, b in zip(shape, full))
    assert int((~blocked.any(axis=inner)).sum()) == n_removed(sparsity, n_blocks)


def test_block_left_pads_block_shape(rng):
    scores = rng.normal(size=(3, 3, 8, 8)).astype("float32")
    short = to_np(ks_ops.block_mask(scores, (4, 4), 0.5))
    padded = to_np(ks_ops.block_mask(scores, (1, 1, 4, 4), 0.5))
    np.testing.assert_array_equal(short, padded)


def test_block_removes_lowest_sum_blocks():
    scores = np.arange(16, dtype="float32").reshape(4, 4)
    mask = to_np(ks_ops.block_mask(scores, (2, 2), 0.5))
    # Block sums: top-left 10, top-right 18, bottom-left 42, bottom-right 50.
    expected = np.zeros((4, 4), bool)
    expected[2:, :] = True
    np.testing.assert_array_equal(mask, expected)


def test_block_ties_keep_lower_block_index():
    mask = to_np(ks_ops.block_mask(np.ones((4, 4)), (2, 2), 0.5))
    expected = np.zeros((4, 4), bool)
    expected[:2, :] = True
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize(
    "shape,block,match",
    [
        ((8, 12), (3, 3), "does not divide"),
        ((8, 12), (2, 5), "does not divide"),
        ((8,), (2, 2), "at most 1"),
        ((8, 12), (0, 2), "positive"),
        ((8, 12), (-2, 2), "positive"),
    ],
    ids=str,
)
def test_block_invalid_shape(shape, block, match):
    with pytest.raises(ValueError, match=match):
        ks_ops.block_mask(np.ones(shape), block, 0.5)


# ---------------------------------------------------------------------------
# channel_mask


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize(
    "shape,axes",
    [((16, 10), (-1,)), ((3, 3, 4, 6), (-1,)), ((3, 3, 4, 6), (-2, -1)), ((6, 5), (0,)), ((12,), (-1,))],
    ids=str,
)
def test_channel_matches_reference(rng, shape, axes, sparsity):
    scores = np.abs(rng.normal(size=shape)).astype("float32")
    mask = to_np(ks_ops.channel_mask(scores, sparsity, axes=axes))
    assert mask.shape == shape
    np.testing.assert_array_equal(mask, ref_channel(scores, sparsity, axes))

    # Whole units: constant over the non-unit axes; exact unit count removed.
    norm = {a % len(shape) for a in axes}
    reduce = tuple(a for a in range(len(shape)) if a not in norm)
    if reduce:
        assert (mask.all(axis=reduce) == mask.any(axis=reduce)).all()
        units = mask.any(axis=reduce)
    else:
        units = mask
    n_units = math.prod(shape[a] for a in norm)
    assert int((~units).sum()) == n_removed(sparsity, n_units)


def test_channel_removes_lowest_l1_units():
    scores = np.array([[1.0, 5.0, 0.0], [1.0, 5.0, 3.0]], dtype="float32")
    mask = to_np(ks_ops.channel_mask(scores, 1 / 3))
    np.testing.assert_array_equal(mask, [[False, True, True], [False, True, True]])


def test_channel_multiple_axes_units():
    scores = np.zeros((2, 2, 3, 4), dtype="float32")
    scores[:, :, 1, 2] = 10.0  # the one (in=1, out=2) unit that matters
    mask = to_np(ks_ops.channel_mask(scores, 11 / 12, axes=(-2, -1)))
    expected = np.zeros((3, 4), bool)
    expected[1, 2] = True
    np.testing.assert_array_equal(mask, np.broadcast_to(expected, (2, 2, 3, 4)))


def test_channel_axis_out_of_range():
    with pytest.raises(ValueError, match="axis=2"):
        ks_ops.channel_mask(np.ones((4, 4)), 0.5, axes=(2,))


# ---------------------------------------------------------------------------
# compiled use (tf.function / jax.jit)


def _compile(fn):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    pytest.skip(f"no compiled-function test for backend {backend}")


_KEEP_TOP_NOT_TRACEABLE = ()


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda s: ks_ops.topk_mask(s, 0.5), marks=_KEEP_TOP_NOT_TRACEABLE, id="topk"),
        pytest.param(
            lambda s: ks_ops.global_topk_masks([s, 2.0 * s], 0.5)[0],
            marks=_KEEP_TOP_NOT_TRACEABLE,
            id="global",
        ),
        pytest.param(
            lambda s: ks_ops.block_mask(s, (2, 2), 0.5), marks=_KEEP_TOP_NOT_TRACEABLE, id="block"
        ),
        pytest.param(
            lambda s: ks_ops.channel_mask(s, 0.5), marks=_KEEP_TOP_NOT_TRACEABLE, id="channel"
        ),
        pytest.param(lambda s: ks_ops.nm_mask(s, 2, 4), id="nm"),
    ],
)
def test_masks_trace_under_compilation(rng, fn):
    scores = rng.normal(size=(8, 8)).astype("float32")
    compiled = _compile(fn)(keras.ops.convert_to_tensor(scores))
    np.testing.assert_array_equal(to_np(compiled), to_np(fn(scores)))


# ---------------------------------------------------------------------------
# mask_sparsity and check_sparsity


def test_mask_sparsity():
    mask = np.array([[True, False, False], [True, True, False]])
    assert ks_ops.mask_sparsity(mask) == pytest.approx(0.5)
    assert ks_ops.mask_sparsity(keras.ops.convert_to_tensor(mask)) == pytest.approx(0.5)
    assert ks_ops.mask_sparsity(np.zeros((0, 3), bool)) == 0.0


@pytest.mark.parametrize("value", [0.0, 0.5, 0.999999, 0, np.float32(0.25), np.float64(0.75)])
def test_check_sparsity_accepts(value):
    result = ks_ops.check_sparsity(value)
    assert isinstance(result, float)
    assert result == float(value)


@pytest.mark.parametrize(
    "value",
    [-0.1, 1.0, 1, 1.5, -1, float("nan"), float("inf"), "abc", "", None, [0.5], {"a": 1}],
    ids=repr,
)
def test_check_sparsity_rejects(value):
    with pytest.raises(ValueError) as info:
        ks_ops.check_sparsity(value)
    assert f"sparsity={value!r}" in str(info.value)


@pytest.mark.parametrize("value", ["0.5", False], ids=repr)
def test_check_sparsity_rejects_numeric_strings_and_bools(value):
    with pytest.raises(ValueError, match=repr(value)):
        ks_ops.check_sparsity(value)


def test_check_sparsity_names_the_argument():
    with pytest.raises(ValueError, match=r"final_sparsity=1\.2"):
        ks_ops.check_sparsity(1.2, "final_sparsity")


@pytest.mark.parametrize(
    "fn",
    [
        lambda s: ks_ops.topk_mask(np.ones(4), s),
        lambda s: ks_ops.global_topk_masks([np.ones(4)], s),
        lambda s: ks_ops.block_mask(np.ones((4, 4)), (2, 2), s),
        lambda s: ks_ops.channel_mask(np.ones((4, 4)), s),
    ],
    ids=["topk", "global", "block", "channel"],
)
@pytest.mark.parametrize("bad", [-0.5, 1.0, float("nan")], ids=repr)
def test_mask_functions_validate_sparsity(fn, bad):
    with pytest.raises(ValueError, match="sparsity"):
        fn(bad)


def test_ops_module_exports():
    for name in ks_ops.__all__:
        assert callable(getattr(ks_ops, name))
    assert mask_ops.topk_mask is ks_ops.topk_mask
