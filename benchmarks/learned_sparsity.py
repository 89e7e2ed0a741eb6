"""Learned sparsity on the digits MLP: hard-concrete L0 gates and STR
against gradual magnitude pruning (GMP) at the same requested sparsity.

Set-up: the ANCHORS digits MLP 64-300-100-10 and split (1347 train / 450
test), TF backend, requested sparsity 80 % and 90 % of every kernel, 3
training seeds (median and min-max reported).

* ``l0``: ``ks.gate(model, HardConcrete(s, warmup_steps=600))``, Adam 2e-2,
  batch 64, 60 epochs, no callback. Reported: the expected sparsity the
  Lagrangian holds (parameter-weighted over the kernels) and the realised
  one (exact zeros of the deterministic gate, what ``ks.strip`` stores).
* ``str``: ``ks.gate(model, SoftThreshold(s, threshold_decay=0,
  warmup_steps=600))`` (the Lagrangian holds STR's smooth sparsity
  estimate at ``s``), same recipe. Reported: the realised sparsity.
* ``gmp``: the ``uniform_end40`` recipe of ``digits_sparsity.py`` (Adam
  1e-3, batch 32, 60 epochs, ``PolynomialDecay`` to ``s`` over the first
  40 % of the steps, uniform per layer).

Accuracy is on the test split after training (the gated models evaluate
with their deterministic gates).

Usage::

    python benchmarks/learned_sparsity.py            # ~5 min quiet (11 min at load 7) -> results/learned_sparsity.json
    python benchmarks/learned_sparsity.py --quick    # smoke run (~30 s, not kept)
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

_common.quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sparse as ks  # noqa: E402
from _common import digits_mlp  # noqa: E402
from _common import load_digits_split  # noqa: E402
from digits_sparsity import RECIPES  # noqa: E402
from digits_sparsity import train_one  # noqa: E402

SPARSITIES = (0.8, 0.9)
SEEDS = (0, 1, 2)
METHODS = ("l0", "str", "gmp")
GATED = dict(lr=2e-2, batch=64, epochs=60, warmup_steps=600)
GMP_RECIPE = "uniform_end40"
GMP_EPOCHS = 60


def _weighted(model, values):
    sizes = [int(np.prod(layer.latent_weight("kernel").shape)) for layer in model.layers]
    return float(np.dot(values, sizes) / sum(sizes))


def train_gated(method, sparsity, seed, data, epochs, warmup_steps):
    x_train, x_test, y_train, y_test = data
    keras.utils.set_random_seed(seed)
    if method == "l0":
        gate = ks.gates.HardConcrete(sparsity, warmup_steps=warmup_steps)
    else:
        gate = ks.gates.SoftThreshold(sparsity, warmup_steps=warmup_steps, threshold_decay=0.0)
    model = ks.gate(digits_mlp(), gate)
    model.compile(keras.optimizers.Adam(GATED["lr"]),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=GATED["batch"], verbose=0)
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    expected = _weighted(model, [layer.expected_sparsity() for layer in model.layers])
    realised = _weighted(model, [layer.sparsity for layer in model.layers])
    stripped = ks.strip(model)
    kernels = [w for w in stripped.get_weights() if w.ndim > 1]
    stripped_sparsity = 1.0 - sum(int(np.count_nonzero(w)) for w in kernels) / sum(
        w.size for w in kernels)
    return {"accuracy": accuracy, "expected_sparsity": expected,
            "realised_sparsity": realised, "stripped_sparsity": stripped_sparsity}


def train_gmp(sparsity, seed, data, epochs):
    run = train_one(RECIPES[GMP_RECIPE], sparsity, seed, data, epochs)
    return {"accuracy": run["accuracy"], "expected_sparsity": None,
            "realised_sparsity": run["kernel_sparsity"],
            "stripped_sparsity": run["kernel_sparsity"]}


def _spread(values):
    return {"median": float(np.median(values)), "min": float(np.min(values)),
            "max": float(np.max(values))}


def _cell(stats, percent=True):
    if stats is None:
        return "–"
    scale = 100 if percent else 1
    return (f"{scale * stats['median']:.2f} ({scale * stats['min']:.2f}–"
            f"{scale * stats['max']:.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (not kept)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument("--epochs", type=int, default=GATED["epochs"], help="gated runs")
    parser.add_argument("--warmup-steps", type=int, default=GATED["warmup_steps"])
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = SEEDS[: args.seeds]
    epochs, warmup, gmp_epochs = args.epochs, args.warmup_steps, GMP_EPOCHS
    if args.quick:
        seeds, epochs, warmup, gmp_epochs = SEEDS[:1], 8, 60, 6
    data = load_digits_split()
    start_all = time.perf_counter()
    rows = []
    for sparsity in SPARSITIES:
        for method in methods:
            runs = []
            for seed in seeds:
                start = time.perf_counter()
                if method == "gmp":
                    runs.append(train_gmp(sparsity, seed, data, gmp_epochs))
                else:
                    runs.append(train_gated(method, sparsity, seed, data, epochs, warmup))
                print(f"  {method} {sparsity:.0%} seed {seed}: acc "
                      f"{100 * runs[-1]['accuracy']:.2f} %, realised "
                      f"{100 * runs[-1]['realised_sparsity']:.2f} % "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            expected = [r["expected_sparsity"] for r in runs]
            rows.append({
                "requested": sparsity,
                "method": method,
                "accuracy": _spread([r["accuracy"] for r in runs]),
                "expected_sparsity": None if expected[0] is None else _spread(expected),
                "realised_sparsity": _spread([r["realised_sparsity"] for r in runs]),
                "runs": runs,
            })
    header = ["requested", "method", "test acc % median (min–max)",
              "expected sparsity %", "realised sparsity %"]
    table = _common.format_table(header, [
        [f"{row['requested']:.0%}", row["method"], _cell(row["accuracy"]),
         _cell(row["expected_sparsity"]), _cell(row["realised_sparsity"])]
        for row in rows
    ], title=f"Learned sparsity, digits MLP 64-300-100-10, seeds {list(seeds)}")
    print(table)
    name = "learned_sparsity_quick" if args.quick else "learned_sparsity"
    path = _common.write_json(name, {
        "setup": {"model": "digits MLP 64-300-100-10", "gated": {**GATED, "epochs": epochs,
                                                                  "warmup_steps": warmup},
                  "gmp_recipe": GMP_RECIPE, "gmp_epochs": gmp_epochs, "seeds": list(seeds),
                  "sparsities": list(SPARSITIES)},
        "rows": rows,
        "table": table,
        "seconds": time.perf_counter() - start_all,
    })
    print(f"wrote {path} ({time.perf_counter() - start_all:.0f} s)")


if __name__ == "__main__":
    main()
