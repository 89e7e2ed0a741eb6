"""SparsityController against gradual magnitude pruning at the same sparsity.

For each model (the digits MLP 64-300-100-10, a small digits CNN and a small
residual CNN) and each target (90 % of the kernel weights with an L1
penalty; 50 % of the hidden units / filters with a group-lasso penalty, the
output layer left dense), two runs of the same length and optimizer (Adam
1e-3, batch 32):

* ``controller``: ``ks.optimizers.Proximal`` + ``ks.callbacks.SparsityController``
  with its defaults (no coefficient given);
* ``gmp``: ``ks.prune`` with ``PolynomialDecay`` from 0 to the target over
  the same first half of training (``pattern="channel"`` for units), then
  fine-tuned with the masks fixed, with ``ks.callbacks.Pruning``.

A third target, 90 % zeros in the hidden *activations* (MLP only), puts a
``ks.layers.ActivitySparsity`` layer after each hidden ReLU and lets the
controller steer their coefficients; it is compared with the ``dense`` model
(the same layers with the coefficient left at 0). Its sparsity column is the
fraction of exact zeros of the hidden activations on the test set.

Data: digits, the fixed 75/25 split of ``_common.load_digits_split``; 20 %
of the training part is held out for validation (the settings of the
controller were chosen on that split with the MLP; the test part is only
reported). Reported per run: the final exact sparsity (fraction of zero
kernel weights, or of zero units/filters, over the penalized layers),
validation and test accuracy; medians and min-max over the seeds.

Usage::

    python benchmarks/controller.py            # 3 models x 2 targets (+ activations) x 3 seeds (~30 min)
    python benchmarks/controller.py --quick    # MLP, 1 seed, 6 epochs (~1 min)
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

_common.quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sparse as ks  # noqa: E402

TARGETS = {"weights": 0.9, "units": 0.5, "activations": 0.9}


def data(seed=0):
    x_train, x_test, y_train, y_test = _common.load_digits_split()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_train))
    cut = int(0.8 * len(order))
    train, val = order[:cut], order[cut:]
    return (x_train[train], y_train[train]), (x_train[val], y_train[val]), (x_test, y_test)


def build(kind):
    if kind == "mlp":
        return _common.digits_mlp()
    inputs = keras.Input((8, 8, 1))
    if kind == "cnn":
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
        h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(128, activation="relu")(h)
    else:  # a small residual net
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
        for _ in range(2):
            r = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
            r = keras.layers.Conv2D(32, 3, padding="same")(r)
            h = keras.layers.Activation("relu")(keras.layers.Add()([h, r]))
        h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs)


def reshape(kind, x):
    return x if kind == "mlp" else x.reshape(-1, 8, 8, 1)


def activation_zeros(model, x):
    layers = [layer for layer in model.layers if isinstance(layer, ks.layers.ActivitySparsity)]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    outputs = probe.predict(x, verbose=0)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return float(sum((o == 0).sum() for o in outputs) / sum(o.size for o in outputs))


def activation_mlp():
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(300, activation="relu"), ks.layers.ActivitySparsity(name="a1"),
        keras.layers.Dense(100, activation="relu"), ks.layers.ActivitySparsity(name="a2"),
        keras.layers.Dense(10, name="logits"),
    ])


def measured(model, target_kind, exclude):
    zeros = total = 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None or layer.name == exclude:
            continue
        k = keras.ops.convert_to_numpy(kernel)
        if target_kind == "weights":
            zeros += int((k == 0).sum())
            total += k.size
        else:
            alive = (k != 0).reshape(-1, k.shape[-1]).any(axis=0)
            zeros += int((~alive).sum())
            total += alive.size
    return zeros / total


def run(kind, target_kind, method, seed, epochs):
    keras.utils.set_random_seed(seed)
    (x, y), (xv, yv), (xt, yt) = data(seed)
    x, xv, xt = reshape(kind, x), reshape(kind, xv), reshape(kind, xt)
    model = build(kind)
    last = model.layers[-1].name
    target = TARGETS[target_kind]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps = int(np.ceil(len(x) / 32)) * epochs
    if target_kind == "activations":
        model = activation_mlp()
        model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
        callbacks = [ks.callbacks.SparsityController(target)] if method == "controller" else []
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)
        return {
            "sparsity": activation_zeros(model, xt),
            "val_accuracy": float(model.evaluate(xv, yv, verbose=0)[1]),
            "test_accuracy": float(model.evaluate(xt, yt, verbose=0)[1]),
        }
    if method == "controller":
        penalty = "l1" if target_kind == "weights" else ks.regularizers.GroupLasso(groups="units")
        optimizer = ks.optimizers.Proximal(
            keras.optimizers.Adam(1e-3), penalty,
            variables=ks.optimizers.kernels(model, exclude=last),
        )
        model.compile(optimizer, loss, metrics=["accuracy"])
        callback = ks.callbacks.SparsityController(target)
    else:
        schedule = ks.schedules.PolynomialDecay(0.0, target, 0, steps // 2, frequency=10)
        pattern = "unstructured" if target_kind == "weights" else "channel"
        model = ks.prune(model, target, schedule=schedule, pattern=pattern,
                         layers=lambda layer: layer.name != last)
        model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
        callback = ks.callbacks.Pruning()
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[callback])
    plain = model if method == "controller" else ks.strip(model)
    return {
        "sparsity": measured(plain, target_kind, last),
        "val_accuracy": float(model.evaluate(xv, yv, verbose=0)[1]),
        "test_accuracy": float(model.evaluate(xt, yt, verbose=0)[1]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,cnn,resnet")
    parser.add_argument("--targets", default="weights,units,activations")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.quick:
        args.models, args.seeds, args.epochs = "mlp", 1, 6
    results = []
    rows = []
    for kind in args.models.split(","):
        for target_kind in args.targets.split(","):
            cell = {}
            if target_kind == "activations" and kind != "mlp":
                continue
            baseline = "dense" if target_kind == "activations" else "gmp"
            for method in ("controller", baseline):
                runs = [run(kind, target_kind, method, s, args.epochs) for s in range(args.seeds)]
                cell[method] = runs
                results.append({"model": kind, "target": target_kind, "method": method,
                                "target_sparsity": TARGETS[target_kind], "runs": runs})

                def spread(key, runs=runs):
                    v = [r[key] for r in runs]
                    return f"{np.median(v):.4f} ({min(v):.4f}-{max(v):.4f})"

                rows.append([kind, f"{TARGETS[target_kind]:.0%} {target_kind}", method,
                             spread("sparsity"), spread("val_accuracy"), spread("test_accuracy")])
                print(_common.format_table(
                    ["model", "target", "method", "sparsity", "val acc", "test acc"], rows[-1:]))
    table = _common.format_table(
        ["model", "target", "method", "sparsity", "val acc", "test acc"], rows,
        title=f"SparsityController vs GMP ({args.seeds} seeds, {args.epochs} epochs; median (min-max))")
    print()
    print(table)
    name = args.output or ("controller_quick" if args.quick else "controller")
    path = _common.write_json(name, {"args": vars(args), "results": results, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
