"""Robustness of masks and quantizers at the edges.

* At least one weight per mask (per tensor for global masks, one block /
  unit for structured ones) at any sparsity in ``[0, 1)``, unless
  ``allow_empty=True``.
* NaN / infinite scores: exact counts, NaN ranked lowest, then -inf.
* Traced masks (``tf.function`` / ``jax.jit``) with a tensor sparsity: the
  eager mask, one trace for every sparsity.
* Pruned positions of the effective weight are exactly 0 even when the
  stored weight is NaN or infinite.
* Quantizers propagate NaN, so ``TerminateOnNaN`` stops a diverged binary
  network.

References are numpy, in ``test_ops_masks``.
"""

import math

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import keras_sparse as ks
from conftest import backend_name
from conftest import to_np
from keras_sparse import ops as ks_ops
from keras_sparse import patterns
from keras_sparse import quantizers
from keras_sparse.ops import drop_grow
from test_ops_masks import n_removed
from test_ops_masks import ref_block
from test_ops_masks import ref_channel
from test_ops_masks import ref_global
from test_ops_masks import ref_nm
from test_ops_masks import ref_topk

SPARSITY = st.floats(0.0, 1.0, exclude_max=True)


def _few(max_examples=50):
    # Backend ops run (and on JAX compile) between the draws of st.data():
    # on a busy shared machine that can look like slow input generation.
    return settings(
        max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


FEW = _few()

finite_elements = st.one_of(
    st.integers(-3, 3).map(float),  # ties
    st.floats(-100.0, 100.0, width=32, allow_subnormal=False),
)
any_elements = st.one_of(
    finite_elements,
    st.sampled_from([np.nan, np.inf, -np.inf]),
)


def _arrays(elements, max_dims=3, max_side=6):
    return hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=max_side),
        elements=elements,
    ).map(lambda a: a + np.float32(0.0))  # no -0.0


# ---------------------------------------------------------------------------
# at least one weight per mask


def test_dense1_kernel_keeps_one_weight():
    # round(0.99 * 32) = 32 would remove the whole Dense(1) kernel.
    scores = np.abs(np.random.default_rng(0).normal(size=(32, 1))).astype("float32")
    mask = to_np(ks_ops.topk_mask(scores, 0.99))
    assert mask.sum() == 1
    assert mask[np.argmax(scores)]
    assert not to_np(ks_ops.topk_mask(scores, 0.99, allow_empty=True)).any()


def test_sparse_dense1_layer_keeps_one_weight():
    layer = ks.layers.SparseDense(1, masked=True)
    layer.build((None, 32))
    layer.prune_to(0.99)
    assert int(to_np(layer.get_mask("kernel")).sum()) == 1
    assert layer.sparsity == pytest.approx(31 / 32)


@FEW
@given(scores=_arrays(finite_elements), sparsity=SPARSITY, allow_empty=st.booleans())
def test_topk_keeps_at_least_one(scores, sparsity, allow_empty):
    mask = to_np(ks_ops.topk_mask(scores, sparsity, allow_empty=allow_empty))
    removed = int((~mask).sum())
    assert removed == n_removed(sparsity, scores.size, allow_empty)
    if allow_empty:
        assert removed == round(sparsity * scores.size)
    else:
        assert mask.any()
    np.testing.assert_array_equal(mask, ref_topk(scores, sparsity, allow_empty))


@FEW
@given(
    scores_list=st.lists(_arrays(finite_elements, max_dims=2), min_size=1, max_size=4),
    offsets=st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4),
    sparsity=SPARSITY,
)
def test_global_keeps_at_least_one_per_tensor(scores_list, offsets, sparsity):
    # Offsets put whole tensors far below the others, the case the rule is for.
    scores_list = [s + np.float32(o) for s, o in zip(scores_list, offsets)]
    masks = [to_np(m) for m in ks_ops.global_topk_masks(scores_list, sparsity)]
    total = sum(s.size for s in scores_list)
    assert all(m.any() for m in masks)
    removed = sum(int((~m).sum()) for m in masks)
    assert removed == min(round(sparsity * total), total - len(scores_list))
    for got, want in zip(masks, ref_global(scores_list, sparsity)):
        np.testing.assert_array_equal(got, want)
    # allow_empty: the plain global threshold.
    masks = [to_np(m) for m in ks_ops.global_topk_masks(scores_list, sparsity, allow_empty=True)]
    for got, want in zip(masks, ref_global(scores_list, sparsity, allow_empty=True)):
        np.testing.assert_array_equal(got, want)


def test_global_takes_the_reserved_weights_from_the_budget():
    tiny = np.full((4, 1), 1e-3, "float32")  # e.g. a Dense(1) head
    big = np.arange(1.0, 97.0, dtype="float32").reshape(8, 12)
    small_mask, big_mask = [to_np(m) for m in ks_ops.global_topk_masks([tiny, big], 0.5)]
    # 50 of 100 removed, as the target says; the head keeps one weight, so
    # the big tensor keeps 49 (its 49 largest) instead of 50.
    np.testing.assert_array_equal(small_mask[:, 0], [True, False, False, False])
    assert big_mask.sum() == 49
    np.testing.assert_array_equal(big_mask.reshape(-1), np.arange(96) >= 47)


@FEW
@given(
    blocks=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    block=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    sparsity=SPARSITY,
    seed=st.integers(0, 2**16),
)
def test_block_keeps_at_least_one_block(blocks, block, sparsity, seed):
    block = tuple(block[: len(blocks)])
    shape = tuple(n * b for n, b in zip(blocks, block))
    scores = np.random.default_rng(seed).normal(size=shape).astype("float32")
    mask = to_np(ks_ops.block_mask(scores, block, sparsity))
    assert mask.any()
    np.testing.assert_array_equal(mask, ref_block(scores, block, sparsity))
    n_blocks = math.prod(blocks)
    assert int((~mask).sum()) == n_removed(sparsity, n_blocks) * math.prod(block)
    empty = to_np(ks_ops.block_mask(scores, block, sparsity, allow_empty=True))
    np.testing.assert_array_equal(empty, ref_block(scores, block, sparsity, allow_empty=True))


@FEW
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5),
    sparsity=SPARSITY,
    seed=st.integers(0, 2**16),
)
def test_channel_keeps_at_least_one_unit(shape, sparsity, seed):
    scores = np.abs(np.random.default_rng(seed).normal(size=shape)).astype("float32")
    mask = to_np(ks_ops.channel_mask(scores, sparsity))
    assert mask.any()
    np.testing.assert_array_equal(mask, ref_channel(scores, sparsity, (-1,)))
    units = mask.reshape(-1, shape[-1]).any(axis=0)
    assert int((~units).sum()) == n_removed(sparsity, shape[-1])
    empty = to_np(ks_ops.channel_mask(scores, sparsity, allow_empty=True))
    np.testing.assert_array_equal(empty, ref_channel(scores, sparsity, (-1,), allow_empty=True))


DENSE = patterns.Layout((-2,), (-1,))


@pytest.mark.parametrize(
    "pattern",
    [patterns.Unstructured(), patterns.Block((2, 2)), patterns.Channel(), patterns.FanIn()],
    ids=repr,
)
def test_patterns_keep_at_least_one(pattern):
    scores = np.abs(np.random.default_rng(0).normal(size=(8, 4))).astype("float32")
    assert to_np(pattern.mask(scores, 0.999, DENSE)).any()
    empty = type(pattern).from_config({**pattern.get_config(), "allow_empty": True})
    assert empty.allow_empty
    assert not to_np(empty.mask(scores, 0.999, DENSE)).any()


@pytest.mark.parametrize(
    "pattern",
    [
        patterns.Unstructured(allow_empty=True),
        patterns.Block((2, 2), allow_empty=True),
        patterns.Channel(allow_empty=True),
        patterns.FanIn(allow_empty=True),
    ],
    ids=repr,
)
def test_allow_empty_pattern_config(pattern):
    config = pattern.get_config()
    assert config["allow_empty"] is True
    assert type(pattern).from_config(config) == pattern
    assert "allow_empty=True" in repr(pattern)
    assert ks.patterns.get(keras.saving.serialize_keras_object(pattern)) == pattern
    # The default stays out of configs, so existing configs are unchanged.
    assert "allow_empty" not in type(pattern).from_config(
        {k: v for k, v in config.items() if k != "allow_empty"}
    ).get_config()


def test_allow_empty_must_be_a_bool():
    with pytest.raises(ValueError, match="allow_empty=1"):
        patterns.Unstructured(allow_empty=1)


# ---------------------------------------------------------------------------
# non-finite scores


def test_nan_scores_keep_the_requested_count():
    scores = np.array([0.5, np.nan, 2.0, np.nan, 1.0, 3.0, np.nan, 0.1], "float32")
    mask = to_np(ks_ops.topk_mask(scores, 0.5))
    assert mask.sum() == 4
    np.testing.assert_array_equal(mask, [True, False, True, False, True, True, False, False])


def test_non_finite_ranking():
    scores = np.array([np.inf, np.nan, 1.0, -np.inf, np.nan, -1.0, -np.inf], "float32")
    order = [0, 2, 5, 3, 6, 1, 4]  # +inf, finite, -inf (by index), NaN (by index)
    for keep in range(1, 8):
        mask = to_np(ks_ops.topk_mask(scores, (7 - keep) / 7))
        expected = np.zeros(7, bool)
        expected[order[:keep]] = True
        np.testing.assert_array_equal(mask, expected, err_msg=f"keep={keep}")


def test_all_nan_scores_keep_lower_indices():
    mask = to_np(ks_ops.topk_mask(np.full((2, 3), np.nan, "float32"), 0.5))
    np.testing.assert_array_equal(mask.reshape(-1), np.arange(6) < 3)
    masks = ks_ops.global_topk_masks([np.full(3, np.nan), np.full(2, np.nan)], 0.9)
    np.testing.assert_array_equal(to_np(masks[0]), [True, False, False])
    np.testing.assert_array_equal(to_np(masks[1]), [True, False])


def _with_non_finite(scores, data):
    """``scores`` with NaN / +-inf written at drawn positions."""
    scores = scores.copy().reshape(-1)
    positions = data.draw(
        st.lists(st.integers(0, scores.size - 1), max_size=scores.size, unique=True)
    )
    for p in positions:
        scores[p] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return scores


@FEW
@given(scores=_arrays(finite_elements), sparsity=SPARSITY, data=st.data())
def test_non_finite_topk_count_is_exact(scores, sparsity, data):
    finite = to_np(ks_ops.topk_mask(scores, sparsity))
    noisy = _with_non_finite(scores, data).reshape(scores.shape)
    mask = to_np(ks_ops.topk_mask(noisy, sparsity))
    assert mask.sum() == finite.sum()
    np.testing.assert_array_equal(mask, ref_topk(noisy, sparsity))


@FEW
@given(
    scores_list=st.lists(_arrays(any_elements, max_dims=2), min_size=1, max_size=3),
    sparsity=SPARSITY,
)
def test_non_finite_global_count_is_exact(scores_list, sparsity):
    masks = [to_np(m) for m in ks_ops.global_topk_masks(scores_list, sparsity)]
    total = sum(s.size for s in scores_list)
    assert sum(int(m.sum()) for m in masks) == total - min(
        round(sparsity * total), total - len(scores_list)
    )
    for got, want in zip(masks, ref_global(scores_list, sparsity)):
        np.testing.assert_array_equal(got, want)


NM_CASES = [(1, 2), (2, 4), (3, 4), (4, 8), (3, 16)]


# Few distinct shapes: each one compiles anew on JAX.
@_few(30)
@given(nm=st.sampled_from(NM_CASES), groups=st.integers(1, 2), other=st.sampled_from([1, 3]),
       data=st.data())
def test_non_finite_nm_count_is_exact(nm, groups, other, data):
    # m = 16 takes the sort-and-count path, smaller groups the pairwise one.
    n, m = nm
    scores = data.draw(hnp.arrays(np.float32, (groups * m, other), elements=any_elements))
    mask = to_np(ks_ops.nm_mask(scores, n, m, axis=0))
    np.testing.assert_array_equal(mask.reshape(groups, m, other).sum(axis=1), n)
    np.testing.assert_array_equal(mask, ref_nm(scores, n, m, 0))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf in a sum
@FEW
@given(
    shape=st.sampled_from([(4, 4), (8, 2, 4), (3, 3, 2, 2)]),
    sparsity=SPARSITY,
    data=st.data(),
)
def test_non_finite_block_and_channel_counts_are_exact(shape, sparsity, data):
    scores = data.draw(hnp.arrays(np.float32, shape, elements=any_elements))
    mask = to_np(ks_ops.block_mask(scores, (2, 2), sparsity))
    np.testing.assert_array_equal(mask, ref_block(scores, (2, 2), sparsity))
    n_blocks = scores.size // 4
    assert int((~mask).sum()) == 4 * n_removed(sparsity, n_blocks)
    mask = to_np(ks_ops.channel_mask(scores, sparsity))
    np.testing.assert_array_equal(mask, ref_channel(scores, sparsity, (-1,)))
    units = mask.reshape(-1, shape[-1]).any(axis=0)
    assert int((~units).sum()) == n_removed(sparsity, shape[-1])


@FEW
@given(
    fan_in=st.integers(1, 8), units=st.integers(1, 4), keep_fraction=st.floats(0.0, 1.0), data=st.data()
)
def test_non_finite_fan_in_count_is_exact(fan_in, units, keep_fraction, data):
    scores = data.draw(hnp.arrays(np.float32, (fan_in, units), elements=any_elements))
    keep = max(1, round(keep_fraction * fan_in))
    mask = to_np(drop_grow.fan_in_mask(scores, keep))
    np.testing.assert_array_equal(mask.sum(axis=0), keep)
    for unit in range(units):
        np.testing.assert_array_equal(mask[:, unit], ref_topk(scores[:, unit], 1 - keep / fan_in))
    assert not to_np(drop_grow.fan_in_mask(scores, 0)).any()


@FEW
@given(size=st.integers(2, 20), fraction=st.floats(0.0, 1.0), data=st.data())
def test_non_finite_drop_and_grow_keeps_the_active_count(size, fraction, data):
    mask = data.draw(hnp.arrays(bool, (size,)))
    drop = data.draw(hnp.arrays(np.float32, (size,), elements=any_elements))
    grow = data.draw(hnp.arrays(np.float32, (size,), elements=any_elements))
    new, dropped, grown = drop_grow.drop_and_grow_arrays(mask, drop, grow, fraction)
    assert new.sum() == mask.sum()
    assert dropped.sum() == grown.sum()


# ---------------------------------------------------------------------------
# traced masks with a tensor sparsity


def _compiler():
    backend = backend_name()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function, lambda v: tf.constant(v, tf.float32)
    if backend == "jax":
        import jax

        return jax.jit, lambda v: jax.numpy.asarray(v, "float32")
    pytest.skip(f"no compiled-function test for backend {backend}")


TRACED = {
    "topk": lambda s, p: ks_ops.topk_mask(s, p),
    "topk_empty": lambda s, p: ks_ops.topk_mask(s, p, allow_empty=True),
    # The second tensor scores far below the first: it keeps one entry.
    "global": lambda s, p: ks_ops.global_topk_masks([s, s[:1] - 100.0, s[:, :2]], p),
    "global_empty": lambda s, p: ks_ops.global_topk_masks([s, s[:1] - 100.0], p, allow_empty=True),
    "block": lambda s, p: ks_ops.block_mask(s, (2, 2), p),
    "channel": lambda s, p: ks_ops.channel_mask(s, p),
}
TRACED_SPARSITIES = [0.0, 0.1, 0.3, 0.5, 0.75, 0.9, 0.99, 0.999]


def _traced_scores():
    scores = np.random.default_rng(0).integers(0, 4, size=(6, 8)).astype("float32")  # ties
    scores[0, 1] = scores[2, 3] = scores[5, 0] = np.nan
    scores[4, 4] = -np.inf
    scores[1, 5] = np.inf
    return scores


def _as_list(masks):
    return [to_np(m) for m in (masks if isinstance(masks, (list, tuple)) else [masks])]


@pytest.mark.parametrize("name", sorted(TRACED))
def test_traced_tensor_sparsity_matches_eager(name):
    compile_fn, tensor = _compiler()
    fn = TRACED[name]
    traces = []

    def traced(scores, sparsity):
        traces.append(1)  # runs once per trace
        return fn(scores, sparsity)

    compiled = compile_fn(traced)
    scores = _traced_scores()
    for sparsity in TRACED_SPARSITIES:
        got = _as_list(compiled(tensor(scores), tensor(sparsity)))
        want = _as_list(fn(scores, sparsity))
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w, err_msg=f"sparsity={sparsity}")
        if not name.endswith("empty"):
            assert all(g.any() for g in got)
    assert len(traces) == 1


@_few(30)
@given(
    scores=hnp.arrays(np.float32, (5, 6), elements=any_elements),
    sparsity=st.floats(0.0, 1.0, exclude_max=True, width=32),
    allow_empty=st.booleans(),
)
def test_traced_topk_matches_eager_property(scores, sparsity, allow_empty):
    compile_fn, tensor = _compiler()
    key = (backend_name(), allow_empty)
    if key not in _TRACED_TOPK:
        _TRACED_TOPK[key] = compile_fn(
            lambda s, p: ks_ops.topk_mask(s, p, allow_empty=allow_empty)
        )
    # A float32 sparsity: the eager mask of the same value.
    got = to_np(_TRACED_TOPK[key](tensor(scores), tensor(sparsity)))
    np.testing.assert_array_equal(got, to_np(ks_ops.topk_mask(scores, sparsity, allow_empty)))


_TRACED_TOPK = {}


def test_traced_static_sparsity_matches_eager():
    compile_fn, tensor = _compiler()
    scores = _traced_scores()
    for sparsity in (0.3, 0.99):
        for name, fn in TRACED.items():
            got = _as_list(compile_fn(lambda s, fn=fn, p=sparsity: fn(s, p))(tensor(scores)))
            for g, w in zip(got, _as_list(fn(scores, sparsity))):
                np.testing.assert_array_equal(g, w, err_msg=f"{name} sparsity={sparsity}")


def test_eager_tensor_sparsity_is_read_and_checked():
    scores = _traced_scores()
    sparsity = keras.ops.convert_to_tensor(0.5)
    np.testing.assert_array_equal(
        to_np(ks_ops.topk_mask(scores, sparsity)), to_np(ks_ops.topk_mask(scores, 0.5))
    )
    with pytest.raises(ValueError, match="sparsity"):
        ks_ops.topk_mask(scores, keras.ops.convert_to_tensor(1.0))


# ---------------------------------------------------------------------------
# pruned positions are exactly zero


@_few(25)
@given(
    features=st.sampled_from([1, 5]),
    units=st.sampled_from([1, 3]),
    quantizer=st.sampled_from([None, "ste_sign", "ternary", 4, "magnitude_aware_sign"]),
    mask=st.lists(st.booleans(), min_size=15, max_size=15),
    poison=st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=15, max_size=15),
    seed=st.integers(0, 2**16),
)
def test_effective_kernel_is_zero_where_pruned(features, units, quantizer, mask, poison, seed):
    size = features * units
    mask = np.array(mask[:size]).reshape(features, units)
    poison = np.array(poison[:size], np.float32).reshape(features, units)
    latent = np.random.default_rng(seed).uniform(-2, 2, size=(features, units)).astype("float32")
    layer = ks.layers.SparseDense(units, kernel_quantizer=quantizer, masked=True)
    layer.build((None, features))
    layer.set_mask("kernel", mask)
    # Optimizer momentum (or divergence) leaves NaN / inf in stored weights
    # at pruned positions.
    layer.latent_weight("kernel").assign(np.where(mask, latent, poison))
    kernel = to_np(layer.kernel)
    assert (kernel[~mask] == 0).all()
    assert np.isfinite(kernel[mask]).all()
    if quantizer is None:
        np.testing.assert_array_equal(kernel[mask], latent[mask])
    np.testing.assert_array_equal(to_np(layer.masked_latent("kernel"))[~mask], 0.0)
    outputs = to_np(layer(np.ones((2, features), "float32")))
    assert np.isfinite(outputs).all()
    layer.reapply_masks()
    stored = to_np(layer.latent_weight("kernel"))
    np.testing.assert_array_equal(stored[~mask], 0.0)
    np.testing.assert_array_equal(stored[mask], latent[mask])


# ---------------------------------------------------------------------------
# quantizers propagate NaN

QUANTIZERS = {
    **{alias: quantizers.get(alias) for alias in sorted(quantizers.REGISTRY)},
    "binary": quantizers.get("binary"),
    "ternary": quantizers.get("ternary"),
    "uniform_clip": quantizers.Uniform(bits=4, clip_value=1.0),
    "uniform_asymmetric": quantizers.Uniform(bits=4, symmetric=False),
    "dorefa_activations": quantizers.DoReFa(bits=2, mode="activations"),
    "lsq_unsigned": quantizers.LSQ(bits=3, signed=False, initial_step=0.25),
}


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_quantizers_propagate_nan(name, training):
    quantizer = QUANTIZERS[name]
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(6, 4)).astype("float32")
    clean[0, 0] = 0.0
    values = clean.copy()
    nan = np.zeros(values.shape, bool)
    nan[[1, 3, 4], [0, 2, 3]] = True
    values[nan] = np.nan
    out = to_np(quantizer(values, training=training))
    assert np.isnan(out[nan]).all()
    # Called without state, LSQ takes its step from the tensor's mean
    # (NaN here); stochastic binarization draws noise.
    data_dependent = name == "lsq" or (training and name == "stochastic_binary")
    if quantizer.elementwise and not data_dependent:
        # Entries without NaN are quantized as before.
        np.testing.assert_array_equal(out[~nan], to_np(quantizer(clean, training=training))[~nan])


def test_sign_of_non_finite_values():
    from keras_sparse.ops import quantize as q_ops

    x = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, -2.0], "float32")
    np.testing.assert_array_equal(to_np(q_ops.sign(x)), [np.nan, -1, 1, 1, 1, -1])
    np.testing.assert_array_equal(to_np(q_ops.ste_tern(x)), [np.nan, -1, 1, 0, 0, -1])
    np.testing.assert_array_equal(to_np(q_ops.ste_heaviside(x)), [np.nan, 0, 1, 0, 0, 0])
    # Integer inputs stay integers.
    ints = q_ops.sign(np.array([-3, 0, 2], "int32"))
    assert "int" in keras.backend.standardize_dtype(ints.dtype)
    np.testing.assert_array_equal(to_np(ints), [-1, 1, 1])


def _binary_model(features, units):
    model = keras.Sequential(
        [
            keras.Input((features,)),
            ks.layers.SparseDense(units, kernel_quantizer="ste_sign", input_quantizer="ste_sign"),
            ks.layers.SparseDense(1, kernel_quantizer="ste_sign"),
        ]
    )
    return model


# 64 x 64 reaches FUSE_MIN_SIZE: on TensorFlow the quantizer and the mask
# then run as one XLA-compiled kernel inside predict / fit.
@pytest.mark.parametrize("features,units", [(8, 4), (64, 64)], ids=["op_by_op", "fused"])
def test_binary_model_with_nan_kernel_outputs_nan(features, units):
    model = _binary_model(features, units)
    x = np.random.default_rng(0).normal(size=(16, features)).astype("float32")
    assert np.isfinite(model.predict(x, verbose=0)).all()
    layer = model.layers[0]
    kernel = to_np(layer.latent_weight("kernel")).copy()
    kernel[0, 0] = np.nan
    layer.latent_weight("kernel").assign(kernel)
    assert np.isnan(to_np(layer.kernel)[0, 0])
    hidden = to_np(layer(x))
    assert np.isnan(hidden[:, 0]).all()
    assert np.isfinite(hidden[:, 1:]).all()
    assert np.isnan(model.predict(x, verbose=0)).all()


@pytest.mark.parametrize("features,units", [(8, 4), (64, 64)], ids=["op_by_op", "fused"])
def test_fit_with_terminate_on_nan_stops_a_diverged_binary_model(features, units):
    model = _binary_model(features, units)
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, features)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    layer = model.layers[0]
    kernel = to_np(layer.latent_weight("kernel")).copy()
    kernel[0, 0] = np.nan
    layer.latent_weight("kernel").assign(kernel)
    seen = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    history = model.fit(
        x, y, batch_size=16, epochs=3, verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN(), record],
    )
    assert model.stop_training
    assert seen == [0]
    assert np.isnan(history.history["loss"][0])
