"""The sparse-training targets, evaluated with their uncertainty.

Each target compares means over seeds. With 3 to 10 seeds and a 450-image
test set (one image = 0.22 point) the per-seed spread is a few tenths of a
point, so "A >= B" on the means alone can flip on a single image. For every
comparison this module also gives the difference of the means with a 95 %
Welch t-interval (unequal variances, scipy's ``ttest_ind``) and a verdict:

* ``PASS``: the inequality holds on the means;
* ``TIE``: it does not, but the interval contains the target (the reverse
  difference is within the seed noise: not significant at 5 %);
* ``MISS``: the interval excludes it (significantly on the wrong side).

For the RigL-vs-GMP target the tolerance (0.5 point) is part of the
inequality: PASS if ``mean(RigL) - mean(GMP) >= -0.5``, TIE if the interval
reaches -0.5.

Re-evaluate a saved result file without retraining::

    python benchmarks/_sparse_stats.py benchmarks/results/archive/sparse_training_10seeds.json
"""

import json
import math
import sys
import warnings

import numpy as np


def difference_interval(a, b, confidence=0.95):
    """Mean of ``a`` minus mean of ``b`` and its Welch t-interval.

    Returns ``(difference, low, high)``; with fewer than two values on a side,
    or no spread on either, the interval is the point itself.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2 or (a.std() == 0 and b.std() == 0):
        return diff, diff, diff
    from scipy import stats

    with warnings.catch_warnings():  # near-constant samples: scipy warns, the result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return diff, float(ci.low), float(ci.high)


def verdict(diff, low, high, margin=0.0):
    """PASS / TIE / MISS for the claim ``diff >= -margin`` (see the module doc)."""
    if diff >= -margin - 1e-12:
        return "PASS"
    return "TIE" if high >= -margin else "MISS"


def _accs(results, method, sparsity):
    row = results.get((method, sparsity))
    return None if row is None else [r["accuracy"] for r in row["runs"]]


def _fmt(diff, low, high):
    return f"{100 * diff:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def checks(results, sparsities):
    """The issue's targets for the tuned and the paper settings.

    ``results`` maps ``(method, sparsity)`` to rows holding ``runs`` (each
    with an ``accuracy``). Returns ``(name, verdict, detail)`` triples; the
    detail gives the means and each difference with its 95 % interval in
    points.
    """
    out = []
    for suffix, label in (("", "tuned"), ("_paper", "paper defaults"),
                          ("_own", "tuned on this MLP")):
        for s in sparsities:
            rigl, set_ = _accs(results, "rigl" + suffix, s), _accs(results, "set" + suffix, s)
            statics = [a for a in (_accs(results, "static_uniform", s),
                                   _accs(results, "static_erk", s)) if a is not None]
            if rigl is not None and set_ is not None and statics:
                static = max(statics, key=np.mean)
                d1 = difference_interval(rigl, set_)
                d2 = difference_interval(set_, static)
                v1, v2 = verdict(*d1), verdict(*d2)
                overall = "MISS" if "MISS" in (v1, v2) else "TIE" if "TIE" in (v1, v2) else "PASS"
                out.append((f"{s:.0%} ({label}): RigL >= SET >= static random (best of "
                            "uniform/ERK)", overall,
                            f"{100 * np.mean(rigl):.2f} / {100 * np.mean(set_):.2f} / "
                            f"{100 * np.mean(static):.2f}; RigL-SET {_fmt(*d1)} {v1}, "
                            f"SET-static {_fmt(*d2)} {v2}"))
            gmp = _accs(results, "gmp", s)
            if math.isclose(s, 0.9) and rigl is not None and gmp is not None:
                d = difference_interval(rigl, gmp)
                out.append((f"90% ({label}): RigL within 0.5 point of GMP",
                            verdict(*d, margin=0.005),
                            f"RigL {100 * np.mean(rigl):.2f} vs GMP {100 * np.mean(gmp):.2f}; "
                            f"RigL-GMP {_fmt(*d)}"))
    return out


def format_checks(verdicts):
    """One line per check: verdict, name, detail."""
    return "\n".join(f"- {v} {name}: {detail}" for name, v, detail in verdicts)


def recheck(path):
    """Recompute the checks of a saved ``sparse_training`` JSON in place."""
    with open(path) as f:
        payload = json.load(f)
    results = {(r["method"], r["sparsity"]): r for r in payload["accuracy"]}
    sparsities = payload["settings"]["sparsities"]
    verdicts = checks(results, sparsities)
    payload["checks"] = [{"check": n, "verdict": v, "passed": v == "PASS", "detail": d}
                         for n, v, d in verdicts]
    text = format_checks(verdicts)
    tables = [t for t in payload.get("tables", []) if not t.startswith("- ")]
    payload["tables"] = tables[:1] + [text] + tables[1:]
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return text


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for p in sys.argv[1:]:
        print(p)
        print(recheck(p))
