"""``ks.auto_compress`` against a hand sweep of GMP levels: the highest
sparsity within a 1-point accuracy drop, and the fine-tune epochs spent to
find it.

Task: the ANCHORS digits MLP 64-300-100-10 (scikit-learn's digits; the 1347
training images split 80/20, stratified, into fit and validation; the 450
test images only for the table). Per seed: train the dense model, then

* **auto_compress**: ``ks.auto_compress(trained, fit, validation_data=val,
  max_accuracy_drop=0.01, fine_tune_epochs=F)``: bisection of the level in
  log-density, each level split over the layers by ``ks.allocate`` with a
  ``ks.sensitivity`` table (the default);
* **auto_compress, uniform**: the same search with every layer at the level
  (``allocation="uniform"``): the search alone, without the allocation;
* **hand sweep**: GMP at 50, 70, 80, 90, 95, 97 and 98 %, uniform over the
  layers, each from the trained weights with the same fine-tune (``F``
  epochs, ``PolynomialDecay`` from 0 over the first half, the same
  schedule as an auto_compress trial); the sweep's answer is the highest
  level whose validation accuracy is within the drop.

Both judge a level on the validation split against the dense model's
validation accuracy. Reported per method: the highest passing sparsity of
the masked weights (``ks.report``), its validation and test accuracy, the
fine-tune epochs and trials spent, wall time. The target (issue 19):
auto_compress reaches at least the sweep's sparsity in fewer fine-tune
epochs.

Usage::

    python benchmarks/auto_compress.py            # 3 seeds, F=2 (~6 min)
    python benchmarks/auto_compress.py --quick    # 1 seed, F=1 (< 3 min)
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

SEEDS = (0, 1, 2)
SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98)
DROP = 0.01
SETTINGS = {
    # dense epochs, fine-tune epochs per trial, batch, learning rate
    "full": (25, 2, 32, 1e-3),
    "quick": (6, 1, 32, 1e-3),
}


enable_determinism = _common.enable_determinism


def digits_task():
    return _common.digits_fit_val_test()


def compile_model(model, lr):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def accuracy(model, data):
    return float(model.evaluate(*data, verbose=0, batch_size=256, return_dict=True)["accuracy"])


def gmp(trained, level, fit, epochs, batch):
    """The sweep's fine-tune: the same schedule as an auto_compress trial."""
    steps = epochs * int(np.ceil(len(fit[0]) / batch))
    end = max(1, steps // 2)
    schedule = ks.schedules.PolynomialDecay(0.0, level, 0, end, frequency=max(1, end // 10))
    pruned = ks.prune(trained, level, schedule=schedule)
    pruned.fit(*fit, epochs=epochs, batch_size=batch, verbose=0,
               callbacks=[ks.callbacks.Pruning(log_per_layer=False)])
    return pruned


def run_seed(seed, mode, log):
    fit, val, test = digits_task()
    dense_epochs, ft_epochs, batch, lr = SETTINGS[mode]
    keras.utils.set_random_seed(seed)
    trained = compile_model(digits_mlp(), lr)
    trained.fit(*fit, epochs=dense_epochs, batch_size=batch, verbose=0)
    dense_val, dense_test = accuracy(trained, val), accuracy(trained, test)
    log(f"  seed {seed}: dense validation {100 * dense_val:.2f} %, test {100 * dense_test:.2f} %")
    out = {"dense_val": dense_val, "dense_test": dense_test, "methods": {}}

    for name, allocation in (("auto_compress", "sensitivity"),
                             ("auto_compress, uniform", "uniform")):
        start = time.perf_counter()
        result = ks.auto_compress(trained, fit, validation_data=val, max_accuracy_drop=DROP,
                                  fine_tune_epochs=ft_epochs, batch_size=batch,
                                  allocation=allocation, seed=seed)
        seconds = time.perf_counter() - start
        best = result.best
        out["methods"][name] = {
            "sparsity": None if best is None else best["achieved_sparsity"],
            "level": None if best is None else best["sparsity"],
            "val_accuracy": None if best is None else best["val_metric"],
            "test_accuracy": accuracy(result.model, test) if best else None,
            "fine_tune_epochs": result.trials.fine_tune_epochs,
            "trials": len(result.trials.rows),
            "seconds": seconds,
            "trial_rows": result.trials.rows,
        }
        log(f"    {name:<22} {_fmt(out['methods'][name])}")

    start = time.perf_counter()
    points, best = [], None
    for level in SWEEP:
        keras.utils.set_random_seed(seed)
        pruned = gmp(trained, level, fit, ft_epochs, batch)
        val_acc = accuracy(pruned, val)
        achieved = ks.report(pruned, print_fn=None).totals["sparsity"]
        point = {"level": level, "sparsity": achieved, "val_accuracy": val_acc,
                 "passed": val_acc >= dense_val - DROP}
        if point["passed"] and (best is None or level > best[0]["level"]):
            best = (point, accuracy(pruned, test))
        points.append(point)
    out["methods"]["hand sweep"] = {
        "sparsity": None if best is None else best[0]["sparsity"],
        "level": None if best is None else best[0]["level"],
        "val_accuracy": None if best is None else best[0]["val_accuracy"],
        "test_accuracy": None if best is None else best[1],
        "fine_tune_epochs": ft_epochs * len(SWEEP),
        "trials": len(SWEEP),
        "seconds": time.perf_counter() - start,
        "points": points,
    }
    log(f"    {'hand sweep':<22} {_fmt(out['methods']['hand sweep'])}")
    return out


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f} %"


def _fmt(m):
    return (f"sparsity {_pct(m['sparsity'])}, val {_pct(m['val_accuracy'])}, test "
            f"{_pct(m['test_accuracy'])}, {m['fine_tune_epochs']} fine-tune epochs in "
            f"{m['trials']} trials, {m['seconds']:.0f} s")


def checks(seeds_out):
    """Per seed: auto_compress reached at least the sweep's sparsity (PASS)
    in fewer fine-tune epochs."""
    out = []
    for i, s in enumerate(seeds_out):
        auto, sweep = s["methods"]["auto_compress"], s["methods"]["hand sweep"]
        sparser = (auto["sparsity"] or 0.0) >= (sweep["sparsity"] or 0.0) - 1e-4
        cheaper = auto["fine_tune_epochs"] < sweep["fine_tune_epochs"]
        out.append({"seed_index": i, "at_least_as_sparse": sparser, "fewer_epochs": cheaper,
                    "verdict": "PASS" if sparser and cheaper else "MISS"})
    return out


def table_text(seeds, seeds_out, mode):
    header = ["method", "seed", "highest sparsity within 1 pt", "val acc", "test acc",
              "fine-tune epochs", "trials", "s"]
    rows = []
    for seed, s in zip(seeds, seeds_out):
        for name, m in s["methods"].items():
            rows.append([name, seed, _pct(m["sparsity"]), _pct(m["val_accuracy"]),
                         _pct(m["test_accuracy"]), m["fine_tune_epochs"], m["trials"],
                         f"{m['seconds']:.0f}"])
    title = (f"Digits MLP 64-300-100-10, max_accuracy_drop={DROP} on the validation split "
             f"({mode} settings: {SETTINGS[mode][1]} fine-tune epochs per trial)")
    return _common.format_table(header, rows, title=title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 1 fine-tune epoch per trial (smoke run, < 3 min)")
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2)")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    enable_determinism()
    mode = "quick" if args.quick else "full"
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else (
        [0] if args.quick else list(SEEDS))
    start = time.perf_counter()
    seeds_out = [run_seed(seed, mode, log) for seed in seeds]
    text = table_text(seeds, seeds_out, mode)
    verdicts = checks(seeds_out)
    print()
    print(text)
    print()
    for seed, v in zip(seeds, verdicts):
        print(f"seed {seed}: auto_compress at least as sparse as the sweep: "
              f"{v['at_least_as_sparse']}, in fewer fine-tune epochs: {v['fewer_epochs']} "
              f"-> {v['verdict']}")
    name = "auto_compress_quick" if args.quick else "auto_compress"
    if not args.quick and seeds != list(SEEDS):
        name = f"auto_compress_seeds{''.join(map(str, seeds))}"
    path = _common.write_json(name, {
        "settings": {"mode": mode, "seeds": seeds, "sweep": list(SWEEP),
                     "max_accuracy_drop": DROP, "epochs": SETTINGS[mode]},
        "results": seeds_out,
        "checks": verdicts,
        "table": text,
        "seconds": time.perf_counter() - start,
    })
    print(f"\nwrote {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
