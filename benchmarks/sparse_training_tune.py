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
* ``--saturation``: whether the methods can be ordered at 90 % on the
  anchor MLP at all. Dense, static ERK, SET and RigL (the chosen settings
  and the neighbouring ΔT / α) at 90 % on 4 folds x 3 shuffles (12 runs
  per cell), with the standard error of each mean.
* ``--capacity``: a narrower MLP for a second, harder set-up. On the anchor
  MLP a static random ERK network at 90 % is as accurate as dense, so the
  methods cannot be ordered there. Dense and static ERK only are trained
  (not SET or RigL), and the widest of ``WIDTHS`` whose static network is
  ``CAPACITY_GAP`` below dense on validation is chosen.

The JSON files are ``results/archive/sparse_training_tuning*.json`` and
``results/archive/sparse_training_saturation.json`` (tuning runs are
archived; the commands are in ``results/archive/README.md``); what they
gave:

How the ``set`` / ``rigl`` settings were chosen:
4-fold stratified cross-validation of the 1347 training examples (fold k:
train on the other three with seed k, evaluate on fold k), grid ΔT ∈ {25,
50, 100} × α ∈ {0.3, 0.5}, criterion the mean accuracy over 90/95/98 %.
First with Adam 1e-3 (``results/archive/sparse_training_tuning.json``: RigL 50 /
0.5, SET 25 / 0.5, which the optimizer search used), then again with the
chosen Adam 1e-2 (``results/archive/sparse_training_tuning_adam1e-2.json``), which
gives the settings used. Validation means with Adam 1e-2 (90 / 95 / 98 %;
mean)::

    RigL ΔT=100 α=0.5  97.70 / 97.03 / 96.88; 97.20  (chosen)
    RigL ΔT=50  α=0.5  97.10 / 97.62 / 96.44; 97.05
    RigL ΔT=100 α=0.3  97.48 / 97.33 / 95.99; 96.93  (paper defaults)
    SET  ΔT=50  α=0.5  97.40 / 97.25 / 94.88; 96.51  (chosen)
    SET  ΔT=25  α=0.3  97.18 / 96.81 / 95.40; 96.46
    SET  ΔT=100 α=0.3  97.10 / 97.85 / 92.80; 95.92  (paper defaults)
    GMP                97.18 / 97.18 / 96.81; 97.06
    static ERK         97.18 / 96.96 / 84.78; 92.97

With Adam 1e-3 (the earlier runs)::

    RigL ΔT=50  α=0.5  96.88 / 96.21 / 95.84; 96.31  (chosen then)
    RigL ΔT=100 α=0.3  96.96 / 96.36 / 94.73; 96.02  (paper defaults)
    SET  ΔT=25  α=0.5  96.44 / 96.06 / 93.76; 95.42  (chosen then)
    SET  ΔT=100 α=0.3  97.25 / 97.03 / 89.01; 94.43  (paper defaults)
    GMP                97.48 / 96.66 / 94.88; 96.34
    static ERK         96.29 / 95.54 / 80.69; 90.84

With Adam 1e-3, every RigL setting lay within 96.66-97.10 at 90 % and 95.77-96.88 at 95 %
(one fold = 337 images, so one image = 0.3 point per fold), SET's within
96.44-97.25 and 96.06-97.03: at 90 and 95 % the two are not separated, and
RigL's lead is at 98 %. Other changes tried on the same folds at 90 / 95 %
with RigL 50/0.5 all stayed within that band, so none was adopted: uniform instead of ERK
budgets (97.10 / 96.07), updates ending at 50 % or 90 % of training
(96.66 / 96.14, 96.81 / 96.51), ΔT = 200 (96.59 / 96.36), α = 0.7
(97.03 / 96.36), a constant α = 0.3 (96.51 / 96.29), the initial mask without the variance rescale
(96.44 / 96.36), and growth from the gradient summed over the last 8 or all
50 steps before an update instead of the last step's (96.96 / 96.51 and
97.18 at 90 %). The old rule that grows only weights inactive before the
update gave 96.51 / 96.51 / 95.32.


The same search on the narrower MLP 64-150-50-10 (``--hidden 150,50``,
``results/archive/sparse_training_tuning_hidden150x50.json``), for the
``set_own`` / ``rigl_own`` rows (90 / 95 / 98 %; mean)::

    RigL ΔT=50  α=0.5  97.03 / 96.21 / 92.13; 95.12  (chosen)
    RigL ΔT=100 α=0.5  97.03 / 96.21 / 91.24; 94.83
    RigL ΔT=100 α=0.3  97.70 / 96.21 / 90.35; 94.75  (paper defaults)
    SET  ΔT=25  α=0.5  96.44 / 95.77 / 88.04; 93.42  (chosen)
    SET  ΔT=25  α=0.3  97.18 / 95.32 / 84.48; 92.33
    SET  ΔT=100 α=0.3  96.73 / 94.21 / 68.15; 86.37  (paper defaults)
    GMP                97.03 / 96.58 / 93.99; 95.87
    static ERK         95.77 / 91.46 / 39.72; 75.65

Can 90 % be ordered on the anchor MLP? (``--saturation``,
``results/archive/sparse_training_saturation.json``; 4 folds x 3 shuffles, 12 runs
per row, mean ± standard error)::

    dense                 97.72 ± 0.22
    static ERK            97.28 ± 0.31
    SET  ΔT=50  α=0.5     97.70 ± 0.25   (chosen)
    SET  ΔT=100 α=0.3     97.55 ± 0.27
    RigL ΔT=100 α=0.5     97.52 ± 0.22   (chosen)
    RigL ΔT=100 α=0.3     97.62 ± 0.21
    RigL ΔT=100 α=0.1     97.67 ± 0.22
    RigL ΔT=200 α=0.3     97.70 ± 0.20

Every SET and RigL setting is within 0.2 point of the others and of dense,
less than one standard error: on this MLP the two cannot be ordered at 90 %
(static ERK is 0.4 below, so SET >= static still shows).

Usage::

    python benchmarks/sparse_training_tune.py --optimizer   # ~45 min
    python benchmarks/sparse_training_tune.py               # ΔT and α (~40 min)
    python benchmarks/sparse_training_tune.py --capacity    # a harder MLP (~5 min)
    python benchmarks/sparse_training_tune.py --saturation  # can 90 % be ordered? (~7 min)
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
from _common import load_digits_split  # noqa: E402

FOLDS = 4
DELTA_T = (25, 50, 100)
ALPHA = (0.3, 0.5)
#: Candidates of ``--optimizer`` (``sparse_training.make_optimizer`` specs):
#: Adam at four constant rates, Adam with cosine decay, AdamW, and SGD with
#: Nesterov momentum 0.9 at RigL's reference MNIST rate.
OPTIMIZERS = ("adam:1e-3", "adam:3e-3", "adam:1e-2", "adam:2e-2", "adam:1e-3:cosine",
              "adamw:3e-3:wd=0.05", "sgd_nesterov:0.05")
OPTIMIZER_METHODS = ("gmp", "static_erk", "set", "rigl")
#: Candidates of ``--capacity``: the anchor MLP's hidden widths scaled by 1/2,
#: 1/3, 1/4 and 1/6, widest first.
WIDTHS = ((150, 50), (100, 33), (75, 25), (50, 17))
#: Cells of ``--saturation``: (method, sparsity, overrides).
SATURATION = (("dense", 0.0, {}), ("static_erk", 0.9, {}), ("set", 0.9, {}),
              ("set", 0.9, {"delta_t": 100, "alpha": 0.3}), ("rigl", 0.9, {}),
              ("rigl", 0.9, {"alpha": 0.3}), ("rigl", 0.9, {"alpha": 0.1}),
              ("rigl", 0.9, {"delta_t": 200, "alpha": 0.3}))
#: ``--capacity`` keeps the widest candidate whose static random ERK network
#: at 90 % is at least this far below dense on validation.
CAPACITY_GAP = 0.01


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


def tune_dynamic(sparsities, epochs, log, repeats=1, hidden=st.HIDDEN):
    """ΔT and α for SET and RigL (GMP and static ERK alongside for reference)
    on the MLP 64-``hidden``-10."""
    x, y, splits = folds(repeats)
    configs = [("gmp", None, None), ("static_erk", None, None)] + [
        (method, delta_t, alpha)
        for method in ("rigl", "set") for delta_t in DELTA_T for alpha in ALPHA]
    rows = []
    for method, delta_t, alpha in configs:
        for sparsity in sparsities:
            accs = cross_validate(method, sparsity, splits, x, y, epochs,
                                  delta_t=delta_t, alpha=alpha, hidden=hidden)
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
    widths = "-".join(str(w) for w in (64, *hidden, 10))
    title = (f"Validation accuracy % ({FOLDS}-fold cross-validation x {repeats} of the "
             f"{len(x)} training examples), MLP {widths}, {st.OPTIMIZER}, mean over the folds")
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


def saturation(log, repeats=3, cells=SATURATION):
    """Dense, static ERK, SET and RigL variants at 90 % on the validation
    folds, with the standard error of each mean: how far apart the methods
    are on the anchor MLP compared with the noise."""
    x, y, splits = folds(repeats)
    rows, body = [], []
    for method, sparsity, overrides in cells:
        accs = cross_validate(method, sparsity, splits, x, y, st.EPOCHS, **overrides)
        sem = float(np.std(accs, ddof=1) / math.sqrt(len(accs)))
        rows.append({"method": method, "sparsity": sparsity, "overrides": overrides,
                     "accuracy_mean": float(np.mean(accs)), "sem": sem, "accuracies": accs})
        recipe = st.dynamic_recipe(method, **overrides) if method in ("set", "rigl") else None
        setting = f"ΔT={recipe['delta_t']} α={recipe['alpha']}" if recipe else "–"
        log(f"  {method} {setting} {sparsity:.0%}: {100 * np.mean(accs):.2f} "
            f"± {100 * sem:.2f} %")
        body.append([method, setting, f"{sparsity:.0%}", f"{100 * np.mean(accs):.2f}",
                     f"{100 * sem:.2f}"])
    title = (f"Validation accuracy % ({FOLDS}-fold cross-validation x {repeats} = "
             f"{len(splits)} runs per row), mean and standard error")
    table = _common.format_table(["method", "setting", "sparsity", "mean", "s.e."], body,
                                 title=title)
    return rows, table


def tune_capacity(log, repeats=1, widths=WIDTHS, sparsity=0.9):
    """A narrower MLP on which a static random network falls below dense at
    90 %: dense and static ERK per width on the validation folds; the widest
    width with a gap of at least ``CAPACITY_GAP`` is chosen. Only dense and
    static ERK are run, so the choice cannot favour SET or RigL."""
    x, y, splits = folds(repeats)
    rows, body, chosen = [], [], None
    for hidden in widths:
        dense = cross_validate("dense", 0.0, splits, x, y, st.EPOCHS, hidden=hidden)
        static = cross_validate("static_erk", sparsity, splits, x, y, st.EPOCHS, hidden=hidden)
        gap = float(np.mean(dense) - np.mean(static))
        if chosen is None and gap >= CAPACITY_GAP:
            chosen = hidden
        rows.append({"hidden": list(hidden), "dense": dense, "static_erk": static,
                     "dense_mean": float(np.mean(dense)),
                     "static_erk_mean": float(np.mean(static)), "gap": gap})
        log(f"  hidden {hidden}: dense {100 * np.mean(dense):.2f}, static ERK "
            f"{sparsity:.0%} {100 * np.mean(static):.2f} %")
        body.append(["-".join(map(str, (64, *hidden, 10))), f"{100 * np.mean(dense):.2f}",
                     f"{100 * np.mean(static):.2f}", f"{100 * gap:.2f}",
                     "chosen" if chosen == hidden else ""])
    title = (f"Validation accuracy % ({FOLDS}-fold cross-validation x {repeats}), dense and "
             f"static random ERK at {sparsity:.0%}; the widest MLP with a gap >= "
             f"{100 * CAPACITY_GAP:.1f} point is chosen")
    table = _common.format_table(["MLP", "dense", "static ERK", "gap", " "], body, title=title)
    return rows, table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", action="store_true",
                        help="compare the optimizers shared by all methods")
    parser.add_argument("--capacity", action="store_true",
                        help="choose a narrower MLP where static sparse < dense at 90 %%")
    parser.add_argument("--saturation", action="store_true",
                        help="dense, static ERK, SET and RigL variants at 90 %% with errors")
    parser.add_argument("--hidden", default=None,
                        help="hidden widths of the MLP for the ΔT/α search (default 300,100)")
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
    if args.capacity:
        repeats = args.repeats or 1
        rows, table = tune_capacity(log, repeats)
        name = "sparse_training_tuning_capacity"
    elif args.saturation:
        repeats = args.repeats or 3
        rows, table = saturation(log, repeats)
        name = "sparse_training_saturation"
    elif args.optimizer:
        candidates = args.candidates.split(",") if args.candidates else OPTIMIZERS
        repeats = args.repeats or 2
        rows, table = tune_optimizer(sparsities, args.epochs, log, repeats, candidates)
        name = "sparse_training_tuning_optimizer"
    else:
        repeats = args.repeats or 1
        hidden = tuple(int(w) for w in args.hidden.split(",")) if args.hidden else st.HIDDEN
        rows, table = tune_dynamic(sparsities, args.epochs, log, repeats, hidden)
        name = "sparse_training_tuning"
        if args.hidden:
            name += "_hidden" + "x".join(str(w) for w in hidden)
            settings["hidden"] = list(hidden)
    name = args.name or name
    print()
    print(table)
    path = _common.write_json(name, {"settings": {**settings, "repeats": repeats},
                                     "rows": rows, "tables": [table]})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
