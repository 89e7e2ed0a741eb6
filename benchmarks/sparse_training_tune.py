"""Choices for ``sparse_training.py`` made on validation data only.

Every run here trains on part of the 1347 training examples of the digits
split and is scored on the rest of them (stratified k-fold
cross-validation, fold ``k`` trained with seed ``k``); the 450 test
examples are never used. Two searches:

* ``--optimizer``: the optimizer all methods share. Each candidate trains
  GMP, static ERK, SET and RigL (their settings in ``sparse_training.TUNED``
  at the time) at 90 / 95 / 98 % on 4 folds x ``--repeats`` shuffles; the
  criterion is the mean over those 12 cells, so no method's ranking is
  chosen for.
* ``--dynamic`` (default): ΔT and α for SET and RigL, per method, with the
  optimizer fixed; criterion the mean over 90 / 95 / 98 %.

The outcome of both is written in ``sparse_training.py``'s docstring and
the JSON files ``results/sparse_training_tuning*.json``.

Usage::

    python benchmarks/sparse_training_tune.py --optimizer   # ~45 min
    python benchmarks/sparse_training_tune.py               # ΔT and α (~40 min)
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

_common.quiet_tensorflow()

import numpy as np  # noqa: E402

import sparse_training as st  # noqa: E402
from keras_sparse.demo import load_digits_split  # noqa: E402

FOLDS = 4
DELTA_T = (25, 50, 100)
ALPHA = (0.3, 0.5)
#: Candidates of ``--optimizer`` (``sparse_training.make_optimizer`` specs):
#: Adam at four constant rates, Adam with cosine decay, AdamW, and SGD with
#: Nesterov momentum 0.9 at RigL's reference MNIST rate.
OPTIMIZERS = ("adam:1e-3", "adam:3e-3", "adam:1e-2", "adam:2e-2", "adam:1e-3:cosine",
              "adamw:3e-3:wd=0.05", "sgd_nesterov:0.05")
OPTIMIZER_METHODS = ("gmp", "static_erk", "set", "rigl")


def folds(repeats=1, k=FOLDS):
    """``k``-fold stratified splits of the training set, ``repeats`` times
    with different shuffles: a list of (fit_index, validation_index)."""
    from sklearn.model_selection import StratifiedKFold

    x_train, _, y_train, _ = load_digits_split(seed=0)
    splits = []
    for repeat in range(repeats):
        splits += list(StratifiedKFold(k, shuffle=True, random_state=1 + repeat)
                       .split(x_train, y_train))
    return x_train, y_train, splits


def cross_validate(method, sparsity, splits, x, y, epochs, **kwargs):
    """Validation accuracies of ``method`` on every split (seed = split index)."""
    accs = []
    for index, (fit, val) in enumerate(splits):
        data = (x[fit], x[val], y[fit], y[val])
        accs.append(st.train_one(method, sparsity, index, data, epochs, **kwargs)["accuracy"])
    return accs


def tune_dynamic(sparsities, epochs, log, repeats=1):
    """ΔT and α for SET and RigL (GMP and static ERK alongside for reference)."""
    x, y, splits = folds(repeats)
    configs = [("gmp", None, None), ("static_erk", None, None)] + [
        (method, delta_t, alpha)
        for method in ("rigl", "set") for delta_t in DELTA_T for alpha in ALPHA]
    rows = []
    for method, delta_t, alpha in configs:
        for sparsity in sparsities:
            accs = cross_validate(method, sparsity, splits, x, y, epochs,
                                  delta_t=delta_t, alpha=alpha)
            rows.append({"method": method, "delta_t": delta_t, "alpha": alpha,
                         "sparsity": sparsity, "accuracy_mean": float(np.mean(accs)),
                         "accuracies": accs})
            log(f"  {method} ΔT={delta_t} α={alpha} {sparsity:.0%}: {100 * np.mean(accs):.2f} %")
    header = ["method", "ΔT", "α"] + [f"{s:.0%}" for s in sparsities] + ["mean"]
    body = []
    for method, delta_t, alpha in configs:
        cells = [r["accuracy_mean"] for r in rows if r["method"] == method
                 and r["delta_t"] == delta_t and r["alpha"] == alpha]
        body.append([method, delta_t or "–", alpha or "–"] + [f"{100 * c:.2f}" for c in cells]
                    + [f"{100 * np.mean(cells):.2f}"])
    title = (f"Validation accuracy % ({FOLDS}-fold cross-validation x {repeats} of the "
             f"{len(x)} training examples), {st.OPTIMIZER}, mean over the folds")
    return rows, _common.format_table(header, body, title=title)


def tune_optimizer(sparsities, epochs, log, repeats=2, candidates=OPTIMIZERS):
    """Mean validation accuracy of GMP, static ERK, SET and RigL per optimizer."""
    x, y, splits = folds(repeats)
    rows = []
    for spec in candidates:
        for method in OPTIMIZER_METHODS:
            for sparsity in sparsities:
                accs = cross_validate(method, sparsity, splits, x, y, epochs, optimizer=spec)
                sem = float(np.std(accs) / math.sqrt(len(accs)))
                rows.append({"optimizer": spec, "method": method, "sparsity": sparsity,
                             "accuracy_mean": float(np.mean(accs)), "sem": sem,
                             "accuracies": accs})
                log(f"  {spec} {method} {sparsity:.0%}: {100 * np.mean(accs):.2f} "
                    f"± {100 * sem:.2f} %")
    header = ["optimizer"] + [f"{m} {s:.0%}" for m in OPTIMIZER_METHODS for s in sparsities] + [
        "mean"]
    body = []
    for spec in candidates:
        cells = [r["accuracy_mean"] for r in rows if r["optimizer"] == spec]
        body.append([spec] + [f"{100 * c:.2f}" for c in cells] + [f"{100 * np.mean(cells):.2f}"])
    title = (f"Validation accuracy % ({FOLDS}-fold cross-validation x {repeats} of the "
             f"{len(x)} training examples, seed = split index), SET/RigL at "
             f"{st.TUNED['set']['delta_t']}/{st.TUNED['set']['alpha']} and "
             f"{st.TUNED['rigl']['delta_t']}/{st.TUNED['rigl']['alpha']} (ΔT/α)")
    return rows, _common.format_table(header, body, title=title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", action="store_true",
                        help="compare the optimizers shared by all methods")
    parser.add_argument("--candidates", default=None,
                        help="comma-separated optimizer specs (default: OPTIMIZERS)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="shuffles of the k folds (default 2 for --optimizer, else 1)")
    parser.add_argument("--sparsities", default="0.9,0.95,0.98")
    parser.add_argument("--epochs", type=int, default=st.EPOCHS)
    parser.add_argument("--name", default=None, help="name of the JSON file in results/")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    st.digits_sparsity.enable_determinism()
    sparsities = [float(s) for s in args.sparsities.split(",")]
    settings = {"epochs": args.epochs, "sparsities": sparsities, "folds": FOLDS,
                "optimizer": st.OPTIMIZER, "tuned": st.TUNED}
    if args.optimizer:
        candidates = args.candidates.split(",") if args.candidates else OPTIMIZERS
        repeats = args.repeats or 2
        rows, table = tune_optimizer(sparsities, args.epochs, log, repeats, candidates)
        name = "sparse_training_tuning_optimizer"
    else:
        repeats = args.repeats or 1
        rows, table = tune_dynamic(sparsities, args.epochs, log, repeats)
        name = "sparse_training_tuning"
    name = args.name or name
    print()
    print(table)
    path = _common.write_json(name, {"settings": {**settings, "repeats": repeats},
                                     "rows": rows, "tables": [table]})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
