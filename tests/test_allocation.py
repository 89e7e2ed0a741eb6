"""ks.sensitivity, ks.allocate, the LAMP distribution and their floor-1 math."""

import json
import math
import sys

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

import keras_sparse as ks
from keras_sparse import distributions
from keras_sparse.ops import allocate_removals
from keras_sparse.ops import lamp_removals
from keras_sparse.ops import lamp_scores
from keras_sparse.report import layer_macs


# ------------------------------------------------------------ numpy references
def ref_lamp_scores(weight):
    """LAMP by its definition: a double loop over the sorted weights."""
    flat = np.asarray(weight, np.float64).reshape(-1)
    order = sorted(range(flat.size), key=lambda i: (flat[i] ** 2, i))
    scores = np.zeros(flat.size)
    for rank, u in enumerate(order):
        tail = sum(flat[v] ** 2 for v in order[rank:])
        scores[u] = flat[u] ** 2 / tail if tail > 0 else 0.0
    return scores.reshape(np.shape(weight))


def ref_lamp_removed(weights, count):
    """Remove the ``count`` lowest LAMP scores over all tensors, each tensor
    keeping its top entry; returns the removed sets."""
    candidates = []
    for t, w in enumerate(weights):
        scores = ref_lamp_scores(w).reshape(-1)
        order = sorted(range(scores.size), key=lambda i: (scores[i], i))
        for i in order[:-1]:
            candidates.append((scores[i], t, i))
    candidates.sort()
    removed = [set() for _ in weights]
    for _, t, i in candidates[:count]:
        removed[t].add(i)
    return removed


# ----------------------------------------------------------------- LAMP math
def test_lamp_scores_hand_made():
    w = np.array([[3.0, -1.0], [0.0, 2.0]])
    # Sorted squares 0, 1, 4, 9 -> tails 14, 14, 13, 9.
    want = np.array([[1.0, 1 / 14], [0.0, 4 / 13]])
    np.testing.assert_allclose(lamp_scores(w), want)
    np.testing.assert_allclose(lamp_scores(w), ref_lamp_scores(w))


@pytest.mark.parametrize("seed", range(5))
def test_lamp_scores_match_reference_with_ties_and_zeros(seed):
    rng = np.random.default_rng(seed)
    w = rng.choice([0.0, -0.5, 0.5, 1.0, -2.0, 3.0], size=(4, 5)) * rng.choice([1, 1, 0.1], (4, 5))
    np.testing.assert_allclose(lamp_scores(w), ref_lamp_scores(w), rtol=1e-12)
    # Scores grow with magnitude inside a tensor; the top scores 1.
    flat = np.abs(w).reshape(-1)
    s = lamp_scores(w).reshape(-1)
    for i in range(flat.size):
        for j in range(flat.size):
            if flat[i] < flat[j]:
                assert s[i] <= s[j]
    assert s.max() == pytest.approx(1.0)


def test_lamp_scores_all_zero():
    np.testing.assert_array_equal(lamp_scores(np.zeros((3, 2))), np.zeros((3, 2)))


@pytest.mark.parametrize("count", [0, 1, 5, 17, 30])
def test_lamp_removals_match_global_threshold_reference(count):
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=(4, 5)), rng.normal(size=(6,)) * 0.1, rng.normal(size=(3, 3)) * 3]
    got = lamp_removals(weights, count)
    want = ref_lamp_removed(weights, count)
    assert got == [len(r) for r in want]
    # The removed entries of each tensor are its smallest weights.
    for w, removed in zip(weights, want):
        order = np.argsort(np.abs(w).reshape(-1), kind="stable")
        assert removed == set(order[: len(removed)].tolist())


def test_lamp_removals_keep_one_and_reject_too_much():
    weights = [np.array([1.0, 2.0]), np.array([3.0, 4.0, 5.0])]
    assert lamp_removals(weights, 3) == [1, 2]
    with pytest.raises(ValueError, match="budget=4"):
        lamp_removals(weights, 4)


def test_lamp_removals_with_costs_skip_free_entries():
    weights = [np.array([0.25, 0.5, 0.75]), np.array([1.0, 2.0, 3.0])]
    # The first tensor costs nothing: it stays whole, the other pays.
    assert lamp_removals(weights, 2.0, costs=[0.0, 1.0]) == [0, 2]
    # LAMP is scale-free: both tensors score (1/14, 4/13, 1). Order by
    # score, ties to the earlier tensor: 1 (cost 1), then 1 (cost 10) frees 11.
    assert lamp_removals(weights, 5.0, costs=[1.0, 10.0]) == [1, 1]
    assert lamp_removals(weights, 1.0, costs=[1.0, 10.0]) == [1, 0]


def test_lamp_distribution_docstring_and_reference():
    got = distributions.LAMP().layer_sparsities(
        {"a": [(3,)], "b": [(2,)]}, 0.4,
        weights={"a": [np.array([1.0, 2.0, 3.0])], "b": [np.array([5.0, 5.0])]})
    assert got == {"a": 2 / 3, "b": 0.0}
    rng = np.random.default_rng(3)
    weights = {"x": [rng.normal(size=(8, 4))], "y": [rng.normal(size=(4, 4)) * 5]}
    shapes = {k: [v[0].shape] for k, v in weights.items()}
    got = distributions.LAMP().layer_sparsities(shapes, 0.5, weights=weights)
    want = ref_lamp_removed([weights["x"][0], weights["y"][0]], 24)
    assert got == {"x": len(want[0]) / 32, "y": len(want[1]) / 16}


def test_lamp_distribution_needs_weights():
    assert distributions.get("lamp").needs_weights
    assert not distributions.get("erk").needs_weights
    with pytest.raises(ValueError, match="weights=None"):
        distributions.LAMP().layer_sparsities({"a": [(2, 2)]}, 0.5)
    config = distributions.serialize(distributions.LAMP())
    assert isinstance(distributions.deserialize(config), distributions.LAMP)


def test_prune_with_lamp_distribution_passes_the_weights():
    model = _mlp(seed=2)
    # LAMP is scale-free per layer: what counts is the spread inside it.
    kernel = np.array(ops.convert_to_numpy(model.get_layer("wide").kernel))
    spiky = np.where(np.random.default_rng(0).random(kernel.shape) < 0.05, kernel, kernel * 1e-3)
    model.get_layer("wide").kernel.assign(spiky)
    pruned = ks.prune(model, 0.8, distribution="lamp")
    weights = {name: [np.array(ops.convert_to_numpy(model.get_layer(name).kernel))]
               for name in ("wide", "mid", "out")}
    want = distributions.LAMP().layer_sparsities(
        {k: [v[0].shape] for k, v in weights.items()}, 0.8, weights=weights)
    for name, sparsity in want.items():
        assert pruned.get_layer(name).schedule.target_sparsity == pytest.approx(sparsity)
    assert want["wide"] > 0.9  # the shrunk layer goes first


# ------------------------------------------------------ budgeted allocation
def test_allocate_removals_docstring():
    assert allocate_removals([[(0.5, 0.0), (0.9, 0.0)], [(0.5, 0.3), (0.9, 0.9)]],
                             [100, 100], [1, 1], 100) == [99, 1]


def test_allocate_removals_is_the_convex_optimum():
    # Two layers with convex curves d = a s^2: the optimum equalizes the
    # marginal loss per unit cost, 2 a_i s_i / c_i.
    grid = np.linspace(0.05, 0.95, 19)
    curves = [[(s, 1.0 * s * s) for s in grid], [(s, 4.0 * s * s) for s in grid]]
    removed = allocate_removals(curves, [1000, 1000], [1.0, 1.0], 1000)
    assert sum(removed) == 1000
    # Analytic: s1 + s2 = 1, 2 s1 = 8 s2 -> s1 = 0.8, s2 = 0.2 (piecewise-
    # linear curves on a 0.05 grid: within one grid step).
    assert abs(removed[0] / 1000 - 0.8) <= 0.05
    assert abs(removed[1] / 1000 - 0.2) <= 0.05


@pytest.mark.parametrize("budget", [0.0, 1.0, 137.0, 640.5, 1234.25])
def test_allocate_removals_meet_the_budget_within_one_entry(budget):
    curves = [[(0.5, 0.1), (0.9, 0.4)], [(0.5, 0.0), (0.9, 0.8)], [(0.3, 0.2)]]
    sizes, costs = [1000, 300, 50], [1.0, 3.0, 7.5]
    removed = allocate_removals(curves, sizes, costs, budget)
    freed = sum(r * c for r, c in zip(removed, costs))
    assert budget <= freed < budget + max(costs)
    assert all(0 <= r <= n - 1 for r, n in zip(removed, sizes))


_curve = st.lists(st.tuples(st.floats(0.01, 0.99), st.floats(-1.0, 3.0)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_curve, st.integers(1, 300), st.sampled_from([0.0, 0.5, 1.0, 3.0, 64.0])),
                min_size=1, max_size=5), st.floats(0.0, 1.0))
def test_allocate_removals_budget_invariant(layers, share):
    curves = [c for c, _, _ in layers]
    sizes = [n for _, n, _ in layers]
    costs = [c for _, _, c in layers]
    capacity = sum((n - 1) * c for n, c in zip(sizes, costs))
    budget = share * capacity
    removed = allocate_removals(curves, sizes, costs, budget)
    freed = sum(r * c for r, c in zip(removed, costs))
    assert budget - 1e-6 * max(1.0, budget) <= freed
    assert freed < budget + max(costs) + 1e-9
    for r, n, c in zip(removed, sizes, costs):
        assert 0 <= r <= n - 1
        if c == 0:
            assert r == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.sampled_from([1.0, 2.0, 7.0])),
                min_size=1, max_size=4), st.floats(0.0, 1.0), st.integers(0, 1000))
def test_lamp_removals_budget_invariant(tensors, share, seed):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=n) * rng.choice([1e-3, 1.0, 10.0]) for n, _ in tensors]
    costs = [c for _, c in tensors]
    capacity = sum((w.size - 1) * c for w, c in zip(weights, costs))
    budget = share * capacity
    removed = lamp_removals(weights, budget, costs)
    freed = sum(r * c for r, c in zip(removed, costs))
    assert budget - 1e-6 * max(1.0, budget) <= freed < budget + max(costs) + 1e-9
    assert all(0 <= r <= w.size - 1 for r, w in zip(removed, weights))


def test_allocate_removals_rejects_an_impossible_budget():
    with pytest.raises(ValueError, match="budget"):
        allocate_removals([[(0.5, 0.0)]], [10], [1.0], 10)


# --------------------------------------------------------------- the models
def _mlp(seed=0, compiled=True):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(40, activation="relu", name="wide"),
        keras.layers.Dense(16, activation="relu", name="mid"),
        keras.layers.Dense(3, name="out"),
    ])
    if compiled:
        model.compile(keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    return model


def _data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    y = (np.argmax(x[:, :3] + 0.3 * x[:, 3:6], axis=1)).astype("int32")
    return x, y


def _cnn(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv"),
        keras.layers.Conv2D(4, 3, name="conv2"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="fc"),
    ])
    return model


def _snapshot(model):
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    return [np.array(ops.convert_to_numpy(v), copy=True) for v in variables]


def _assert_same(before, model):
    after = _snapshot(model)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def _prunable_sizes_and_costs(model, by):
    """Reference costs straight from ks.report's pieces."""
    out = {}
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        size = int(np.prod(kernel.shape))
        if by == "params":
            cost = 1.0
        elif by == "flops":
            cost = 2.0 * layer_macs(layer, "kernel", 1)
        else:
            cost = 4.0
        out[layer.name] = (size, cost)
    return out


# ------------------------------------------------------------- ks.allocate
@pytest.mark.parametrize("by", ["params", "flops", "bytes"])
@pytest.mark.parametrize("budget", [0.5, 0.9, 0.95])
def test_allocate_lamp_meets_the_budget_within_one_weight(by, budget):
    model = _cnn()
    per_layer = ks.allocate(model, budget, by=by)
    costs = _prunable_sizes_and_costs(model, by)
    assert set(per_layer) == set(costs)
    total = sum(n * c for n, c in costs.values())
    freed = sum(round(per_layer[k] * n) * c for k, (n, c) in costs.items())
    assert budget * total - 1e-6 <= freed < budget * total + max(c for _, c in costs.values())
    assert ks.allocation.removed_fraction(model, per_layer, by=by) == pytest.approx(
        freed / total)


def test_allocate_flops_budget_equals_the_report_after_masking():
    model = _cnn()
    per_layer = ks.allocate(model, 0.9, by="flops")
    pruned = ks.prune(model, None, distribution=per_layer)
    for layer in pruned.layers:
        if isinstance(layer, ks.layers.SparseMixin):
            layer.prune_to(per_layer[layer.name])
    totals = ks.report(pruned, print_fn=None).totals
    removed = 1 - totals["effective_flops"] / totals["dense_flops"]
    one_weight = max(2 * layer_macs(layer, "kernel", 1) for layer in model.layers
                     if getattr(layer, "kernel", None) is not None)
    assert 0.9 <= removed + 1e-9
    assert removed * totals["dense_flops"] < 0.9 * totals["dense_flops"] + one_weight
    # FLOPs-aware: the conv layers (costly per weight) are pruned harder than
    # they would be for the same share of parameters.
    by_params = ks.allocate(model, 0.9, by="params")
    assert per_layer["conv"] + per_layer["conv2"] > by_params["conv"] + by_params["conv2"] - 1e-9


def test_allocate_bytes_counts_packed_quantized_weights():
    model = _mlp()
    model = ks.quantize(model, 4, layers=["wide"])
    per_layer = ks.allocate(model, 0.5, by="bytes")
    sizes = {"wide": (480, 0.5), "mid": (640, 4.0), "out": (48, 4.0)}
    total = sum(n * c for n, c in sizes.values())
    freed = sum(round(per_layer[k] * n) * c for k, (n, c) in sizes.items())
    assert 0.5 * total <= freed < 0.5 * total + 4.0


def test_allocate_with_a_table_prefers_insensitive_layers_hand_made():
    rows = []
    for s in (0.5, 0.9):
        rows.append(dict(layer="wide", sparsity=s, removed=0, params=480, metric=0.9 - s, delta=-s))
        rows.append(dict(layer="mid", sparsity=s, removed=0, params=640, metric=0.9, delta=0.0))
        rows.append(dict(layer="out", sparsity=s, removed=0, params=48, metric=0.9 - s / 5,
                         delta=-s / 5))
    table = ks.SensitivityTable(rows, 0.9, "accuracy", True)
    model = _mlp()
    per_layer = ks.allocate(model, 0.6, sensitivity=table)
    # 701 weights: mid (free) gives all but one, then wide (0.5 / 240 per
    # weight) before out (0.1 / 24 per weight).
    assert per_layer == {"wide": 62 / 480, "mid": 639 / 640, "out": 0.0}
    freed = sum(round(per_layer[k] * n) for k, n in (("wide", 480), ("mid", 640), ("out", 48)))
    assert freed == math.ceil(0.6 * 1168)


def _two_layer_chain():
    """x -> fragile (dense, every weight matters) -> robust (identity on 8
    of 64 entries, zeros elsewhere) -> y. Pruning up to 56/64 of robust
    changes nothing; pruning fragile always hurts."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(8, use_bias=False, name="fragile"),
        keras.layers.Dense(8, use_bias=False, name="robust"),
    ])
    h = np.sign(rng.normal(size=(8, 8))) * (0.8 + 0.4 * rng.random((8, 8)))
    model.get_layer("fragile").kernel.assign(h.astype("float32"))
    model.get_layer("robust").kernel.assign(np.eye(8, dtype="float32"))
    x = rng.normal(size=(128, 8)).astype("float32")
    y = np.asarray(model.predict(x, verbose=0))
    return model, x, y


def test_allocate_with_a_measured_table_prefers_the_insensitive_layer():
    model, x, y = _two_layer_chain()
    table = ks.sensitivity(model, (x, y), sparsities=(0.25, 0.5, 0.8), metric="mse", verbose=0)
    assert not table.greater_is_better
    robust = [r for r in table.rows if r["layer"] == "robust"]
    fragile = [r for r in table.rows if r["layer"] == "fragile"]
    assert all(abs(r["delta"]) < 1e-10 for r in robust)
    assert all(r["delta"] > 0.01 for r in fragile)
    per_layer = ks.allocate(model, 0.4, sensitivity=table)
    assert per_layer == {"fragile": 0.0, "robust": math.ceil(0.4 * 128) / 64}


def test_allocate_bad_inputs_leave_the_model_untouched():
    model = _mlp()
    model.fit(*_data(), epochs=1, verbose=0)
    before = _snapshot(model)
    table = ks.SensitivityTable(
        [dict(layer="mid", sparsity=0.5, removed=320, params=640, metric=0.5, delta=0.0)],
        0.5, "accuracy", True)
    bad = [
        (dict(budget=1.0), ValueError, "budget=1.0"),
        (dict(budget=-0.1), ValueError, "budget=-0.1"),
        (dict(budget="0.9"), TypeError, "budget='0.9'"),
        (dict(budget=0.9, by="latency"), ValueError, "by='latency'"),
        (dict(budget=0.9, sensitivity={"mid": 0.5}), TypeError, "sensitivity="),
        (dict(budget=0.9, sensitivity=table, layers=["wide", "mid"]), ValueError, "'wide'"),
        (dict(budget=0.99999), ValueError, "budget=0.99999"),
        (dict(budget=0.5, sensitivity=ks.SensitivityTable(
            [dict(layer="mid", sparsity=0.5, removed=5, params=10, metric=0.5, delta=0.0)],
            0.5), layers=["mid"]), ValueError, "another model"),
    ]
    for kwargs, error, text in bad:
        with pytest.raises(error, match=text):
            ks.allocate(model, **kwargs)
    with pytest.raises(TypeError, match="model="):
        ks.allocate("model", 0.5)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match="no layer that can be pruned"):
        ks.allocate(plain, 0.5)
    _assert_same(before, model)


# ----------------------------------------------------------- ks.sensitivity
def _ref_metric_with_layer_pruned(model, layer_name, sparsity, x, y, metric):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    kernel = np.array(ops.convert_to_numpy(clone.get_layer(layer_name).kernel))
    flat = np.abs(kernel).reshape(-1)
    removed = min(int(round(sparsity * flat.size)), flat.size - 1)
    # Lowest magnitudes go first, ties to the higher index (the lower is kept).
    order = sorted(range(flat.size), key=lambda i: (flat[i], -i))
    keep = np.ones(flat.size, bool)
    keep[order[:removed]] = False
    clone.get_layer(layer_name).kernel.assign(np.where(keep.reshape(kernel.shape), kernel, 0))
    return metric(y, np.asarray(clone.predict(x, verbose=0))), removed


def _mse(y_true, y_pred):
    return float(np.mean((np.asarray(y_true) - np.asarray(y_pred)) ** 2))


def test_sensitivity_values_match_a_numpy_reference():
    model = _mlp(compiled=False)
    x, _ = _data()
    y = np.asarray(model.predict(x, verbose=0)) + 0.1
    table = ks.sensitivity(model, (x, y), sparsities=(0.3, 0.9), metric=_mse, verbose=0)
    assert table.baseline == pytest.approx(_mse(y, model.predict(x, verbose=0)), rel=1e-5)
    assert table.layers == ["wide", "mid", "out"]
    assert table.metric == "_mse" and not table.greater_is_better
    for row in table.rows:
        want, removed = _ref_metric_with_layer_pruned(
            model, row["layer"], row["sparsity"], x, y, _mse)
        assert row["metric"] == pytest.approx(want, rel=1e-5)
        assert row["removed"] == removed
        assert row["delta"] == pytest.approx(row["metric"] - table.baseline)
        assert row["params"] == int(np.prod(model.get_layer(row["layer"]).kernel.shape))


def test_sensitivity_restores_every_variable_bit_for_bit():
    x, y = _data()
    model = _mlp()
    model = ks.prune(model, 0.5, layers=["mid"],
                     schedule=ks.schedules.PolynomialDecay(0.0, 0.5, 0, 8, frequency=2))
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[ks.callbacks.Pruning()])
    sparse = model.get_layer("mid")
    sparsity_before = sparse.sparsity
    assert sparsity_before == pytest.approx(0.5, abs=0.01)
    before = _snapshot(model)
    assert any(np.any(v) for v in before[len(model.weights):])  # optimizer has state
    table = ks.sensitivity(model, (x, y), sparsities=(0.2, 0.7, 0.95), verbose=0)
    _assert_same(before, model)
    assert sparse.sparsity == sparsity_before
    assert table.metric == "accuracy" and table.greater_is_better
    # A level below the layer's own sparsity removes nothing more.
    mid = {r["sparsity"]: r for r in table.rows if r["layer"] == "mid"}
    assert mid[0.2]["delta"] == 0.0
    assert mid[0.2]["removed"] == round(sparsity_before * 640)
    assert mid[0.95]["removed"] == round(0.95 * 640)
    # And the model trains on as before.
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[ks.callbacks.Pruning()])


def test_sensitivity_compiled_metric_choice_and_explicit_metrics():
    x, y = _data()
    model = _mlp()
    model.fit(x, y, epochs=2, verbose=0)
    loss = ks.sensitivity(model, (x, y), sparsities=0.5, metric="loss", verbose=0)
    assert loss.metric == "loss" and not loss.greater_is_better
    assert loss.baseline == pytest.approx(model.evaluate(x, y, verbose=0, batch_size=128)[0],
                                          rel=1e-5)
    accuracy = ks.sensitivity(model, (x, y), sparsities=[0.5], verbose=0)
    own = ks.sensitivity(model, (x, y), sparsities=[0.5], verbose=0,
                         metric=keras.metrics.SparseCategoricalAccuracy())
    by_name = ks.sensitivity(_uncompiled_copy(model), (x, y), sparsities=[0.5], verbose=0,
                             metric="accuracy")
    for row_a, row_b, row_c in zip(accuracy.rows, own.rows, by_name.rows):
        assert row_a["metric"] == pytest.approx(row_b["metric"], abs=1e-6)
        assert row_a["metric"] == pytest.approx(row_c["metric"], abs=1e-6)


def _uncompiled_copy(model):
    # clone_model would compile the copy like the original.
    copy = _mlp(compiled=False)
    copy.set_weights(model.get_weights())
    assert not copy.compiled
    return copy


def test_sensitivity_data_kinds_agree():
    x, y = _data(200)
    model = _mlp()

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[50 * i: 50 * (i + 1)], y[50 * i: 50 * (i + 1)]

    arrays = ks.sensitivity(model, (x, y), sparsities=(0.5,), verbose=0,
                            metric="sparse_categorical_accuracy")
    pydata = ks.sensitivity(model, Batches(), sparsities=(0.5,), verbose=0,
                            metric="sparse_categorical_accuracy")
    assert [r["metric"] for r in arrays.rows] == pytest.approx([r["metric"] for r in pydata.rows])
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
        tfdata = ks.sensitivity(model, dataset, sparsities=(0.5,), verbose=0,
                                metric="sparse_categorical_accuracy")
        assert [r["metric"] for r in tfdata.rows] == pytest.approx(
            [r["metric"] for r in arrays.rows])
        compiled = ks.sensitivity(model, dataset, sparsities=(0.5,), verbose=0)
        assert [r["metric"] for r in compiled.rows] == pytest.approx(
            [r["metric"] for r in arrays.rows])


def test_sensitivity_progress_bar(capsys):
    x, y = _data(64)
    model = _mlp()
    ks.sensitivity(model, (x, y), sparsities=(0.5,), verbose=0)
    assert capsys.readouterr().out == ""
    ks.sensitivity(model, (x, y), sparsities=(0.5,), verbose=1)
    out = capsys.readouterr().out
    assert "3/3" in out and "delta" in out


def test_sensitivity_on_a_cnn_with_a_structured_pattern():
    model = _cnn()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 2)).astype("float32")
    y = np.asarray(model.predict(x, verbose=0))
    before = _snapshot(model)
    table = ks.sensitivity(model, (x, y), sparsities=(0.5,), metric="mse", pattern="channel",
                           verbose=0)
    _assert_same(before, model)
    conv = [r for r in table.rows if r["layer"] == "conv"][0]
    assert conv["removed"] == 3 * 3 * 2 * 3  # 3 of 6 output channels
    assert conv["delta"] > 0


def test_sensitivity_bad_inputs_leave_the_model_untouched():
    x, y = _data(64)
    model = _mlp()
    model.fit(x, y, epochs=1, verbose=0)
    before = _snapshot(model)
    bad = [
        (dict(data=x), ValueError, "labels"),
        (dict(data=(x,)), ValueError, "labels"),
        (dict(data=(x, None)), ValueError, "labels"),
        (dict(data=(x, y[:10])), ValueError, "same number of samples"),
        (dict(data="data"), TypeError, "data='data'"),
        (dict(data=(x, y), sparsities=(0.5, 1.0)), ValueError, r"sparsities\[1\]=1.0"),
        (dict(data=(x, y), sparsities=(-0.1,)), ValueError, r"sparsities\[0\]=-0.1"),
        (dict(data=(x, y), sparsities="0.5"), TypeError, "sparsities='0.5'"),
        (dict(data=(x, y), sparsities=()), TypeError, "sparsities=()"),
        (dict(data=(x, y), metric=42), TypeError, "metric=42"),
        (dict(data=(x, y), metric="no_such_metric"), ValueError, "no_such_metric"),
        (dict(data=(x, y), batch_size=0), ValueError, "batch_size=0"),
        (dict(data=(x, y), verbose=5), ValueError, "verbose=5"),
        (dict(data=(x, y), mode="up"), ValueError, "mode='up'"),
        (dict(data=(x, y), layers=["nope"]), ValueError, "nope"),
        (dict(data=(x, y), pattern="2:5"), ValueError, "2:5|m=5|NByM"),
    ]
    for kwargs, error, text in bad:
        with pytest.raises(error, match=text):
            ks.sensitivity(model, **kwargs)
    _assert_same(before, model)
    with pytest.raises(ValueError, match="metric=None"):
        ks.sensitivity(_uncompiled_copy(model), (x, y))
    with pytest.raises(TypeError, match="model="):
        ks.sensitivity(model.layers[0], (x, y))
    plain = keras.Sequential([keras.Input((12,)), keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match="no layer that can be pruned"):
        ks.sensitivity(plain, (x, y), metric="mse")
    _assert_same(before, model)


def test_sensitivity_table_round_trip_and_plot(monkeypatch):
    model, x, y = _two_layer_chain()
    table = ks.sensitivity(model, (x, y), sparsities=(0.5, 0.8), metric="mse", verbose=0)
    text = json.dumps(table.to_dict())
    again = ks.SensitivityTable.from_dict(json.loads(text))
    assert again == table
    assert ks.allocate(model, 0.3, sensitivity=again) == ks.allocate(model, 0.3, sensitivity=table)
    assert "robust" in str(table) and "mse" in str(table)
    with pytest.raises(TypeError, match="data="):
        ks.SensitivityTable.from_dict([1])
    with pytest.raises(ValueError, match="baseline"):
        ks.SensitivityTable.from_dict({"rows": []})

    import matplotlib

    matplotlib.use("Agg")
    ax = table.plot()
    assert len(ax.get_lines()) == 3  # two layers and the dense baseline
    assert ax.get_ylabel() == "mse"
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="plot"):
        table.plot()


# -------------------------------------------------------- fit-level, budget
@pytest.mark.slow
@pytest.mark.parametrize("by", ["params", "flops"])
def test_prune_with_an_allocation_reaches_the_budget_after_fit(by):
    x, y = _data(320)
    model = _mlp()
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    table = ks.sensitivity(model, (x[:160], y[:160]), sparsities=(0.5, 0.9, 0.97), verbose=0)
    budget = 0.95 if by == "params" else 0.9
    for per_layer in (ks.allocate(model, budget, by=by),
                      ks.allocate(model, budget, by=by, sensitivity=table)):
        pruned = ks.prune(model, None, distribution=per_layer,
                          schedule=ks.schedules.PolynomialDecay(0.0, budget, 0, 20, frequency=5))
        pruned.compile(keras.optimizers.Adam(1e-3),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
        pruned.fit(x, y, epochs=3, batch_size=32, verbose=0,
                   callbacks=[ks.callbacks.Pruning()])
        totals = ks.report(pruned, print_fn=None).totals
        if by == "params":
            removed = totals["masked_params"] - totals["masked_nonzeros"]
            assert 0 <= removed - budget * totals["masked_params"] < 1
        else:
            removed = 1 - totals["effective_flops"] / totals["dense_flops"]
            one_weight = 2 / totals["dense_flops"]
            assert budget - 1e-9 <= removed < budget + one_weight + 1e-9
        for layer in pruned.layers:
            assert layer.sparsity == pytest.approx(per_layer[layer.name], abs=1e-9)
