"""The sparse-training benchmark's verdicts: Welch intervals against the
textbook formula, PASS / TIE / MISS, and the checks on hand-built results."""

import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import _sparse_stats  # noqa: E402

stats = pytest.importorskip("scipy.stats")


def _welch_reference(a, b, confidence=0.95):
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(va + vb)
    diff = a.mean() - b.mean()
    return diff, diff - half, diff + half


def test_interval_matches_the_welch_formula():
    a = [0.9800, 0.9756, 0.9822, 0.9778, 0.9844]
    b = [0.9711, 0.9800, 0.9689, 0.9756]
    got = _sparse_stats.difference_interval(a, b)
    np.testing.assert_allclose(got, _welch_reference(a, b), rtol=1e-9, atol=1e-12)


def test_interval_degenerates_to_the_point_without_spread():
    assert _sparse_stats.difference_interval([0.9], [0.8, 0.7]) == pytest.approx((0.15,) * 3)
    assert _sparse_stats.difference_interval([0.5, 0.5], [0.4, 0.4]) == pytest.approx((0.1,) * 3)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.5, 1.0), min_size=2, max_size=10),
       st.lists(st.floats(0.5, 1.0), min_size=2, max_size=10))
def test_interval_contains_the_difference_and_is_antisymmetric(a, b):
    d, lo, hi = _sparse_stats.difference_interval(a, b)
    assert lo - 1e-12 <= d <= hi + 1e-12
    d2, lo2, hi2 = _sparse_stats.difference_interval(b, a)
    np.testing.assert_allclose((d2, lo2, hi2), (-d, -hi, -lo), atol=1e-9)


@pytest.mark.parametrize("args, expected", [
    ((0.0, -0.1, 0.1), "PASS"),
    ((0.002, -0.1, 0.1), "PASS"),
    ((-0.002, -0.01, 0.006), "TIE"),
    ((-0.02, -0.03, -0.01), "MISS"),
])
def test_verdict(args, expected):
    assert _sparse_stats.verdict(*args) == expected


def test_verdict_margin():
    # RigL 0.4 point below GMP passes a 0.5-point tolerance; 0.8 below with an
    # interval reaching -0.5 ties; an interval entirely below -0.5 misses.
    assert _sparse_stats.verdict(-0.004, -0.01, 0.002, margin=0.005) == "PASS"
    assert _sparse_stats.verdict(-0.008, -0.012, -0.004, margin=0.005) == "TIE"
    assert _sparse_stats.verdict(-0.008, -0.010, -0.006, margin=0.005) == "MISS"


def _row(method, sparsity, accs):
    return {"method": method, "sparsity": sparsity, "runs": [{"accuracy": a} for a in accs]}


def test_checks_on_hand_built_results():
    rows = [
        _row("rigl", 0.9, [0.970, 0.975, 0.972]),
        _row("set", 0.9, [0.980, 0.968, 0.976]),  # mean above RigL, within noise
        _row("static_uniform", 0.9, [0.90, 0.91, 0.92]),
        _row("static_erk", 0.9, [0.95, 0.96, 0.955]),  # the best static is ERK
        _row("gmp", 0.9, [0.990, 0.991, 0.992]),  # RigL clearly > 0.5 below
        _row("rigl", 0.98, [0.95, 0.951, 0.952]),
        _row("set", 0.98, [0.90, 0.91, 0.905]),
        _row("static_erk", 0.98, [0.60, 0.65, 0.70]),
    ]
    results = {(r["method"], r["sparsity"]): r for r in rows}
    out = {name: (v, detail) for name, v, detail in _sparse_stats.checks(results, [0.9, 0.98])}
    order90 = out["90% (tuned): RigL >= SET >= static random (best of uniform/ERK)"]
    assert order90[0] == "TIE"
    assert order90[1].startswith("97.23 / 97.47 / 95.50")
    assert out["90% (tuned): RigL within 0.5 point of GMP"][0] == "MISS"
    assert out["98% (tuned): RigL >= SET >= static random (best of uniform/ERK)"][0] == "PASS"
    # No paper-default rows were given: no paper-default checks.
    assert not any("paper" in name for name in out)


def test_checks_cover_the_settings_tuned_on_each_mlp():
    rows = [
        _row("rigl_own", 0.9, [0.975, 0.976, 0.977]),
        _row("set_own", 0.9, [0.970, 0.971, 0.972]),
        _row("static_erk", 0.9, [0.95, 0.96, 0.955]),
        _row("gmp", 0.9, [0.978, 0.979, 0.980]),
    ]
    results = {(r["method"], r["sparsity"]): r for r in rows}
    out = {name: v for name, v, _ in _sparse_stats.checks(results, [0.9])}
    assert out == {
        "90% (tuned on this MLP): RigL >= SET >= static random (best of uniform/ERK)": "PASS",
        "90% (tuned on this MLP): RigL within 0.5 point of GMP": "PASS",
    }


def test_own_settings_are_looked_up_per_mlp():
    import sparse_training

    assert sparse_training.dynamic_recipe("rigl_own") == sparse_training.TUNED["rigl"]
    assert sparse_training.dynamic_recipe("set_own", alpha=0.1)["alpha"] == 0.1
    assert sparse_training.dynamic_recipe("rigl_paper")["alpha"] == sparse_training.ALPHA
    with pytest.raises(ValueError, match="hidden=\\(7, 3\\)"):
        sparse_training.dynamic_recipe("rigl_own", hidden=(7, 3))
