"""Per-layer sparsity allocation: uniform, global, ERK, LAMP and
``ks.allocate(sensitivity=table)`` at one global budget.

Two budgets: 95 % of the prunable parameters removed, and 90 % of the dense
FLOPs removed (10 % kept; ``ks.report``'s cost model through
``ks.allocate(by="flops")``). Two tasks:

* ``digits``: the ANCHORS MLP 64-300-100-10 on scikit-learn's digits (the
  1347 training images split 80/20 into fit / validation, the 450 test
  images for the table);
* ``stripes``: a generated offline task, 16x16 images of noisy stripes in
  four orientations (random frequency and phase, Gaussian noise), a small
  CNN conv8-pool-conv16-pool-dense32-dense4 (the convolutions hold most
  FLOPs, the dense layer most parameters, so the two budgets differ).

Protocol, per task and seed: train the dense model; measure
``ks.sensitivity`` on the validation split (levels 0.5 ... 0.99); for each
method compute per-layer sparsities on the trained weights that meet the
budget exactly (uniform, global magnitude and ERK: the model-level sparsity
is bisected until ``ks.allocation.removed_fraction`` reaches the budget;
LAMP: ``ks.allocate(model, budget, by)``; sensitivity:
``ks.allocate(model, budget, by, sensitivity=table)``); then

* **one-shot**: the trained weights pruned to those sparsities at once
  (magnitude), no retraining: the allocation alone;
* **fine-tuned**: ``ks.prune(trained, None, distribution=per_layer)`` with
  ``PolynomialDecay`` from 0 over the first half of the fine-tuning epochs
  and ``ks.callbacks.Pruning``, test accuracy at the end.

Every method gets the same dense model, the same budget and the same
fine-tuning. Reported: test accuracy median and min-max over seeds, and the
budget each allocation actually reached (params and FLOPs removed).

Usage::

    python benchmarks/allocation.py            # 3 seeds (~12 min)
    python benchmarks/allocation.py --quick    # smoke run, 1 seed, few epochs (< 3 min)
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
METHODS = ("uniform", "global", "erk", "lamp", "sensitivity")
BUDGETS = (("params", 0.95), ("flops", 0.90))
LEVELS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
SETTINGS = {
    # dense epochs, fine-tuning epochs, batch, learning rate
    "full": {"digits": (25, 12, 32, 1e-3), "stripes": (15, 8, 64, 2e-3)},
    "quick": {"digits": (6, 3, 32, 1e-3), "stripes": (4, 2, 64, 2e-3)},
}


enable_determinism = _common.enable_determinism


# ------------------------------------------------------------------ tasks
def digits_task():
    return (*_common.digits_fit_val_test(), lambda: digits_mlp())


def stripes_images(n, rng, size=16, noise=1.0):
    """``n`` noisy stripe images in 4 orientations (0, 90, 45, 135 degrees)."""
    labels = rng.integers(0, 4, size=n)
    angles = np.array([0.0, 0.5, 0.25, 0.75])[labels] * np.pi
    freq = rng.uniform(0.6, 1.4, size=n)
    phase = rng.uniform(0, 2 * np.pi, size=n)
    yy, xx = np.mgrid[0:size, 0:size].astype("float32")
    proj = (np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy)
    images = np.sin(freq[:, None, None] * proj + phase[:, None, None])
    images = images + noise * rng.standard_normal(images.shape)
    return images[..., None].astype("float32"), labels.astype("int32")


def stripes_cnn():
    return keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", name="fc1"),
        keras.layers.Dense(4, name="fc2"),
    ])


def stripes_task():
    rng = np.random.default_rng(12345)  # the data is fixed; seeds vary training
    return (stripes_images(2000, rng), stripes_images(500, rng), stripes_images(1000, rng),
            stripes_cnn)


TASKS = {"digits": digits_task, "stripes": stripes_task}


# ------------------------------------------------------------- allocations
def prunable(model):
    return [layer for layer in model.layers if getattr(layer, "kernel", None) is not None]


def kernels(model):
    return [np.array(keras.ops.convert_to_numpy(layer.kernel)) for layer in prunable(model)]


def at_model_sparsity(method, model, sparsity):
    layers = prunable(model)
    if method == "uniform":
        return {layer.name: sparsity for layer in layers}
    if method == "erk":
        shapes = {layer.name: [tuple(layer.kernel.shape)] for layer in layers}
        return ks.distributions.ERK().layer_sparsities(shapes, sparsity)
    if method == "global":
        masks = ks.ops.global_topk_masks([np.abs(k) for k in kernels(model)], sparsity)
        return {layer.name: 1.0 - float(np.mean(m)) for layer, m in zip(layers, masks)}
    raise ValueError(method)


def bisect(method, model, budget, by):
    """The smallest model-level sparsity whose per-layer split removes at
    least ``budget`` of the cost."""
    low, high = 0.0, 0.9999
    for _ in range(40):
        mid = (low + high) / 2
        if ks.allocation.removed_fraction(model, at_model_sparsity(method, model, mid), by) >= budget:
            high = mid
        else:
            low = mid
    return at_model_sparsity(method, model, high)


def allocation(method, model, budget, by, table):
    if method == "lamp":
        return ks.allocate(model, budget, by=by)
    if method == "sensitivity":
        return ks.allocate(model, budget, by=by, sensitivity=table)
    if method in ("uniform", "global") and by == "params":
        return at_model_sparsity(method, model, budget)
    return bisect(method, model, budget, by)


# ------------------------------------------------------------- training
def compile_model(model, lr):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def accuracy(model, data):
    return float(model.evaluate(*data, verbose=0, batch_size=256, return_dict=True)["accuracy"])


def one_shot(trained, per_layer, test):
    pruned = ks.prune(trained, None, distribution=per_layer)
    for layer in pruned.layers:
        if ks.layers.is_sparse_layer(layer):
            layer.prune_to(per_layer[layer.name])
    compile_model(pruned, 1e-3)
    return accuracy(pruned, test)


def fine_tune(trained, per_layer, fit, test, epochs, batch, lr):
    steps = epochs * int(np.ceil(len(fit[0]) / batch))
    schedule = ks.schedules.PolynomialDecay(0.0, max(per_layer.values()), 0, steps // 2,
                                            frequency=max(1, steps // 40))
    pruned = compile_model(ks.prune(trained, None, distribution=per_layer, schedule=schedule), lr)
    pruned.fit(*fit, epochs=epochs, batch_size=batch, verbose=0,
               callbacks=[ks.callbacks.Pruning(log_per_layer=False)])
    totals = ks.report(pruned, print_fn=None).totals
    return {
        "accuracy": accuracy(pruned, test),
        "params_removed": 1 - totals["masked_nonzeros"] / totals["masked_params"],
        "flops_removed": 1 - totals["effective_flops"] / totals["dense_flops"],
    }


def run_seed(task, seed, mode, log):
    fit, val, test, make = TASKS[task]()
    dense_epochs, ft_epochs, batch, lr = SETTINGS[mode][task]
    keras.utils.set_random_seed(seed)
    trained = compile_model(make(), lr)
    start = time.perf_counter()
    trained.fit(*fit, epochs=dense_epochs, batch_size=batch, verbose=0)
    dense = accuracy(trained, test)
    table = ks.sensitivity(trained, val, sparsities=LEVELS, verbose=0)
    log(f"  {task} seed {seed}: dense acc {100 * dense:.2f} % "
        f"({time.perf_counter() - start:.0f} s with the sensitivity sweep)")
    out = {"dense_accuracy": dense, "sensitivity": table.to_dict(), "runs": {}}
    for by, budget in BUDGETS:
        for method in METHODS:
            per_layer = allocation(method, trained, budget, by, table)
            keras.utils.set_random_seed(seed)
            start = time.perf_counter()
            result = fine_tune(trained, per_layer, fit, test, ft_epochs, batch, lr)
            result["one_shot_accuracy"] = one_shot(trained, per_layer, test)
            result["per_layer"] = per_layer
            out["runs"][f"{by}:{method}"] = result
            log(f"    {by} {budget:.0%} {method:<11} one-shot "
                f"{100 * result['one_shot_accuracy']:6.2f} %  fine-tuned "
                f"{100 * result['accuracy']:6.2f} %  (params -{100 * result['params_removed']:.2f} "
                f"%, FLOPs -{100 * result['flops_removed']:.2f} %; "
                f"{time.perf_counter() - start:.0f} s)")
    return out


def summarize(task, seeds_out):
    rows = []
    for by, budget in BUDGETS:
        for method in METHODS:
            runs = [s["runs"][f"{by}:{method}"] for s in seeds_out]
            accs = [r["accuracy"] for r in runs]
            shots = [r["one_shot_accuracy"] for r in runs]
            rows.append({
                "task": task, "budget": f"{by} -{budget:.0%}", "method": method,
                "accuracy_median": float(np.median(accs)),
                "accuracy_min": float(np.min(accs)), "accuracy_max": float(np.max(accs)),
                "one_shot_median": float(np.median(shots)),
                "one_shot_min": float(np.min(shots)), "one_shot_max": float(np.max(shots)),
                "params_removed": float(np.median([r["params_removed"] for r in runs])),
                "flops_removed": float(np.median([r["flops_removed"] for r in runs])),
                "per_layer_seed0": runs[0]["per_layer"],
            })
    return rows


def table_text(rows, seeds, mode, dense):
    header = ["task", "budget", "method", "fine-tuned acc (median)", "min-max",
              "one-shot acc (median)", "min-max", "params removed", "FLOPs removed"]
    body = [[r["task"], r["budget"], r["method"],
             f"{100 * r['accuracy_median']:.2f} %",
             f"{100 * r['accuracy_min']:.2f}–{100 * r['accuracy_max']:.2f}",
             f"{100 * r['one_shot_median']:.2f} %",
             f"{100 * r['one_shot_min']:.2f}–{100 * r['one_shot_max']:.2f}",
             f"{100 * r['params_removed']:.2f} %", f"{100 * r['flops_removed']:.2f} %"]
            for r in rows]
    dense_text = ", ".join(f"{task} {100 * np.median(a):.2f} %" for task, a in dense.items())
    title = (f"Per-layer allocation at one budget, test accuracy over seeds {tuple(seeds)} "
             f"({mode} settings); dense median: {dense_text}")
    return _common.format_table(header, body, title=title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, a few epochs (smoke run, < 3 min)")
    parser.add_argument("--tasks", default="digits,stripes")
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2)")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    enable_determinism()
    mode = "quick" if args.quick else "full"
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else (
        [0] if args.quick else list(SEEDS))
    tasks = args.tasks.split(",")
    start = time.perf_counter()
    rows, results, dense = [], {}, {}
    for task in tasks:
        seeds_out = [run_seed(task, seed, mode, log) for seed in seeds]
        results[task] = seeds_out
        dense[task] = [s["dense_accuracy"] for s in seeds_out]
        rows.extend(summarize(task, seeds_out))
    text = table_text(rows, seeds, mode, dense)
    print()
    print(text)
    name = "allocation_quick" if args.quick else "allocation"
    if not args.quick and (tasks != ["digits", "stripes"] or seeds != list(SEEDS)):
        name = f"allocation_{'_'.join(tasks)}_seeds{''.join(map(str, seeds))}"
    path = _common.write_json(name, {
        "settings": {"mode": mode, "seeds": seeds, "tasks": tasks,
                     "budgets": [list(b) for b in BUDGETS], "methods": list(METHODS),
                     "sensitivity_levels": list(LEVELS), "epochs": SETTINGS[mode]},
        "rows": rows,
        "results": results,
        "table": text,
        "seconds": time.perf_counter() - start,
    })
    print(f"\nwrote {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
