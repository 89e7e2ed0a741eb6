"""Floor-1 scalar formulas: the GMP schedule and ERK per-layer densities."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_sparse import ops as ks_ops

# ---------------------------------------------------------------------------
# polynomial_sparsity


def ref_polynomial(step, s_i, s_f, t0, t1, p):
    """Zhu & Gupta (2017), with the progress clipped to [0, 1]."""
    progress = np.clip((step - t0) / (t1 - t0), 0.0, 1.0)
    return s_f + (s_i - s_f) * (1.0 - progress) ** p


@pytest.mark.parametrize("power", [1, 2, 3, 0.5])
@pytest.mark.parametrize("initial,final", [(0.0, 0.9), (0.2, 0.8), (0.5, 0.5)])
@pytest.mark.parametrize("step", [0, 99, 100, 101, 250, 550, 999, 1000, 1001, 5000])
def test_polynomial_matches_formula(step, initial, final, power):
    got = ks_ops.polynomial_sparsity(step, initial, final, 100, 1000, power)
    assert isinstance(got, float)
    assert got == pytest.approx(ref_polynomial(step, initial, final, 100, 1000, power), abs=1e-12)


def test_polynomial_docstring_value():
    assert ks_ops.polynomial_sparsity(50, 0.0, 0.9, 0, 100, power=3) == pytest.approx(0.7875)


def test_polynomial_end_points():
    assert ks_ops.polynomial_sparsity(10, 0.1, 0.9, 10, 20) == pytest.approx(0.1)
    assert ks_ops.polynomial_sparsity(0, 0.1, 0.9, 10, 20) == pytest.approx(0.1)
    assert ks_ops.polynomial_sparsity(20, 0.1, 0.9, 10, 20) == pytest.approx(0.9)
    assert ks_ops.polynomial_sparsity(10**9, 0.1, 0.9, 10, 20) == pytest.approx(0.9)


def test_polynomial_default_power_is_cubic():
    assert ks_ops.polynomial_sparsity(25, 0.0, 1.0, 0, 100) == pytest.approx(1 - 0.75**3)


def test_polynomial_degenerate_interval_is_a_step():
    assert ks_ops.polynomial_sparsity(4, 0.1, 0.9, 5, 5) == pytest.approx(0.1)
    assert ks_ops.polynomial_sparsity(5, 0.1, 0.9, 5, 5) == pytest.approx(0.9)
    assert ks_ops.polynomial_sparsity(6, 0.1, 0.9, 5, 3) == pytest.approx(0.9)


@settings(max_examples=200)
@given(
    steps=st.lists(st.integers(0, 3000), min_size=2, max_size=2),
    initial=st.floats(0.0, 0.99),
    final=st.floats(0.0, 0.99),
    begin=st.integers(0, 1000),
    length=st.integers(1, 2000),
    power=st.sampled_from([1, 2, 3, 4]),
)
def test_polynomial_monotone_and_bounded(steps, initial, final, begin, length, power):
    a, b = sorted(steps)
    end = begin + length
    sa = ks_ops.polynomial_sparsity(a, initial, final, begin, end, power)
    sb = ks_ops.polynomial_sparsity(b, initial, final, begin, end, power)
    lo, hi = min(initial, final), max(initial, final)
    assert lo - 1e-12 <= sa <= hi + 1e-12
    # Moves monotonically from the initial towards the final value.
    if final >= initial:
        assert sb >= sa - 1e-12
    else:
        assert sb <= sa + 1e-12


# ---------------------------------------------------------------------------
# erk_densities


def ref_erk(shapes, density, power_scale=1.0):
    """ERK by water-filling: find eps with sum(min(1, eps*raw_i) * n_i) equal
    to the budget by bisection (the left side is continuous and increasing),
    instead of the re-solving loop the library uses."""
    sizes = np.array([math.prod(s) for s in shapes], dtype=np.float64)
    raw = np.array([(sum(s) / math.prod(s)) ** power_scale for s in shapes])
    budget = density * sizes.sum()

    def kept(eps):
        return (np.minimum(1.0, eps * raw) * sizes).sum()

    lo, hi = 0.0, 1.0
    while kept(hi) < budget:
        hi *= 2.0
        if hi > 1e300:
            break
    for _ in range(400):
        mid = 0.5 * (lo + hi)
        if kept(mid) < budget:
            lo = mid
        else:
            hi = mid
    return np.minimum(1.0, hi * raw)


MLP = [(64, 300), (300, 100), (100, 10)]
CNN = [(3, 3, 1, 32), (3, 3, 32, 64), (1600, 128), (128, 10)]
TINY_FIRST = [(3, 3, 1, 2), (64, 300)]


def kept_count(shapes, densities):
    return sum(d * math.prod(s) for d, s in zip(densities, shapes))


@pytest.mark.parametrize("shapes", [MLP, CNN, TINY_FIRST, [(10, 10)]], ids=["mlp", "cnn", "tiny", "one"])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("power_scale", [1.0, 0.5])
def test_erk_matches_reference(shapes, density, power_scale):
    got = ks_ops.erk_densities(shapes, density, power_scale)
    assert len(got) == len(shapes)
    assert all(isinstance(d, float) for d in got)
    assert all(0.0 < d <= 1.0 for d in got)
    np.testing.assert_allclose(got, ref_erk(shapes, density, power_scale), rtol=1e-6)
    total = sum(math.prod(s) for s in shapes)
    assert kept_count(shapes, got) == pytest.approx(density * total, rel=1e-6)


def test_erk_resolves_when_a_layer_exceeds_one():
    # With one shared eps the 18-weight conv would need density > 1; it is
    # made dense and the big layer absorbs the rest of the budget.
    got = ks_ops.erk_densities(TINY_FIRST, 0.5)
    total = 18 + 64 * 300
    assert got[0] == 1.0
    assert got[1] == pytest.approx((0.5 * total - 18) / (64 * 300), rel=1e-12)
    naive_eps = 0.5 * total / sum(sum(s) for s in TINY_FIRST)
    assert naive_eps * sum(TINY_FIRST[0]) / 18 > 1.0  # the case really arises


def test_erk_density_proportional_to_raw_ratio():
    got = ks_ops.erk_densities(MLP, 0.1)
    raw = [sum(s) / math.prod(s) for s in MLP]
    ratios = [d / r for d, r in zip(got, raw) if d < 1.0]
    assert len(ratios) >= 2
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)


def test_erk_dense_layers_have_the_largest_raw_ratio():
    got = ks_ops.erk_densities(CNN, 0.1)
    raw = [sum(s) / math.prod(s) for s in CNN]
    dense = [r for d, r in zip(got, raw) if d == 1.0]
    sparse = [r for d, r in zip(got, raw) if d < 1.0]
    assert dense and sparse
    assert min(dense) >= max(sparse)


def test_erk_power_scale_zero_is_uniform():
    got = ks_ops.erk_densities(CNN, 0.3, power_scale=0.0)
    np.testing.assert_allclose(got, 0.3, rtol=1e-12)


def test_erk_empty():
    assert ks_ops.erk_densities([], 0.5) == []


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_erk_invalid_density(density):
    with pytest.raises(ValueError, match=f"density={density}"):
        ks_ops.erk_densities(MLP, density)


shape_lists = st.lists(
    st.lists(st.integers(1, 64), min_size=1, max_size=4).map(tuple), min_size=1, max_size=6
)


@settings(max_examples=150)
@given(shapes=shape_lists, density=st.floats(0.01, 1.0))
def test_erk_properties(shapes, density):
    got = ks_ops.erk_densities(shapes, density)
    assert all(0.0 < d <= 1.0 + 1e-12 for d in got)
    total = sum(math.prod(s) for s in shapes)
    assert kept_count(shapes, got) == pytest.approx(density * total, rel=1e-6)
    np.testing.assert_allclose(got, ref_erk(shapes, density), rtol=1e-6)
