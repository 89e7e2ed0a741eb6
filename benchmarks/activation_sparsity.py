"""Accuracy and activation sparsity of digits MLPs with sparse activations.

The ANCHORS digits MLP 64-300-100-10 (stratified 75/25 split of
``sklearn.datasets.load_digits``, 1347 train / 450 test, ``random_state=0``),
Adam 1e-3, batch 32, the same epochs for every variant, 3 training seeds:

- ``dense``: ReLU hidden layers (their zeros are the baseline).
- ``topk_25`` / ``topk_10``: each hidden ``Dense`` is linear and followed by
  ``ks.layers.TopKActivation(fraction=0.25 / 0.10)`` (k-winners-take-all:
  75 / 30 of 300 units and 25 / 10 of 100 kept per example).
- ``activity_l``: ReLU hidden layers each followed by
  ``ks.layers.ActivitySparsity(l)`` (L1 penalty ``l * mean(|a|)``, fixed ``l``).

Reported per variant: test accuracy (median and min-max over seeds), the
fraction of exact zeros in the hidden activations the next Dense layer reads
on the test set, and the share of the model's FLOPs a kernel skipping zero
inputs could save (both from ``ks.report(model, data=x_test)``; the zeros of
the input pixels are left out, they do not depend on the variant).

Usage::

    python benchmarks/activation_sparsity.py            # ~4 min on 2 shared cores
    python benchmarks/activation_sparsity.py --quick    # smoke run (~20 s)
    python benchmarks/activation_sparsity.py --variants activity --l 1.0  # another penalty
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
from _common import load_digits_split  # noqa: E402

EPOCHS = 20
SEEDS = (0, 1, 2)
HIDDEN = (300, 100)
DEFAULT_L = 0.1


def build(variant, l):  # noqa: E741
    layers = [keras.Input((64,))]
    for units in HIDDEN:
        if variant == "dense":
            layers.append(keras.layers.Dense(units, activation="relu"))
        elif variant.startswith("topk_"):
            fraction = int(variant.split("_")[1]) / 100
            layers += [keras.layers.Dense(units), ks.layers.TopKActivation(fraction=fraction)]
        else:
            layers += [keras.layers.Dense(units, activation="relu"), ks.layers.ActivitySparsity(l)]
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


def run(variant, seed, epochs, l, data):  # noqa: E741
    x_train, x_test, y_train, y_test = data
    keras.utils.set_random_seed(seed)
    model = build(variant, l)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    seconds = time.perf_counter() - start
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    result = ks.report(model, print_fn=None, data=x_test)
    hidden = [row for row in result.activations if not row["layer"].startswith("input")]
    sizes = [model.get_layer(row["feeds"]).kernel.shape[0] for row in hidden]
    zeros = float(np.average([row["zeros"] for row in hidden], weights=sizes))
    saveable = sum(row["saveable_flops"] for row in hidden) / result.totals["effective_flops"]
    return dict(variant=variant, seed=seed, accuracy=accuracy, hidden_zeros=zeros,
                per_layer_zeros=[row["zeros"] for row in hidden],
                saveable_flops_share=saveable, train_seconds=seconds)


def summarize(runs, variants):
    rows = []
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        acc = [r["accuracy"] for r in mine]
        rows.append(dict(
            variant=variant, accuracy_median=_common.median(acc), accuracy_min=min(acc),
            accuracy_max=max(acc),
            hidden_zeros_median=_common.median(r["hidden_zeros"] for r in mine),
            saveable_flops_share_median=_common.median(r["saveable_flops_share"] for r in mine),
            train_seconds_median=_common.median(r["train_seconds"] for r in mine),
        ))
    return rows


def table(summary, epochs, seeds):
    header = ["variant", "accuracy (median)", "min-max", "hidden zeros", "saveable FLOPs",
              "train s"]
    body = [[
        s["variant"], f"{s['accuracy_median']:.4f}",
        f"{s['accuracy_min']:.4f}-{s['accuracy_max']:.4f}",
        f"{100 * s['hidden_zeros_median']:.1f}%", f"{100 * s['saveable_flops_share_median']:.1f}%",
        f"{s['train_seconds_median']:.1f}",
    ] for s in summary]
    title = (f"digits MLP 64-300-100-10, {epochs} epochs, seeds {list(seeds)}: "
             "test accuracy and zeros the next Dense layer reads (test set)")
    return _common.format_table(header, body, title=title)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, not kept")
    parser.add_argument("--l", type=float, default=DEFAULT_L,
                        help=f"ActivitySparsity coefficient (default {DEFAULT_L})")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of dense,topk_25,topk_10,activity")
    args = parser.parse_args()
    epochs = 3 if args.quick else EPOCHS
    seeds = [0] if args.quick else (
        [int(s) for s in args.seeds.split(",")] if args.seeds else list(SEEDS))
    variants = ["dense", "topk_25", "topk_10", f"activity_{args.l:g}"]
    if args.variants:
        chosen = args.variants.split(",")
        variants = [v for v in variants if v in chosen or v.split("_")[0] in chosen]
    data = load_digits_split()
    runs = []
    for seed in seeds:
        for variant in variants:
            runs.append(run(variant, seed, epochs, args.l, data))
            r = runs[-1]
            print(f"{variant:>14} seed {seed}: accuracy {r['accuracy']:.4f}, "
                  f"hidden zeros {100 * r['hidden_zeros']:.1f}%", flush=True)
    summary = summarize(runs, variants)
    print()
    print(table(summary, epochs, seeds))
    if args.quick:
        name = "activation_sparsity_quick"
    elif args.l == DEFAULT_L and not args.seeds and not args.variants:
        name = "activation_sparsity"
    else:
        name = "activation_sparsity_" + "_".join(
            ([args.variants.replace(",", "-")] if args.variants else [])
            + [f"l{args.l:g}"] + ([f"seeds{args.seeds.replace(',', '-')}"] if args.seeds else []))
    path = _common.write_json(name, {
        "config": dict(epochs=epochs, seeds=seeds, hidden=list(HIDDEN), l=args.l,
                       optimizer="adam 1e-3", batch=32),
        "summary": summary, "runs": runs,
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
