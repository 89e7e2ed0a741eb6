"""Real savings in plain Keras: channel pruning + shrink, column sampling,
low-rank factorization.

Models:

* ``mlp``: the digits MLP 64-300-100-10 (scikit-learn ``load_digits``,
  stratified 75/25 split);
* ``cnn``: a digits CNN, 8x8x1 -> conv32 -> conv64 -> maxpool -> flatten ->
  dense128 -> dense10;
* ``wide_cnn``: a wider synthetic CNN for timing only, 32x32x32 -> conv128
  -> conv128 -> maxpool -> conv256 -> global average pool -> dense10, with
  random weights whose kernels have an ``i^-0.75`` singular-value spectrum
  (so that a 90 % energy rank is meaningful without training). On the
  small digits models fixed per-call costs dominate the latency; this one
  spends its time in the convolutions.

Variants, each from the same trained dense model:

* ``dense``;
* ``channels 50%``: ``ks.prune_channels(..., 0.5, scorer="l2_norm")`` on the
  hidden layers (never the classifier), fine-tuned with fixed masks, then
  ``ks.shrink``;
* ``columns 50%``: ``ks.sample_columns(..., 0.5, "leverage", data=x_train)``
  on every Dense layer (least-squares refit), fine-tuned, then ``ks.shrink``
  (which removes the units and model inputs no layer reads any more);
* ``low-rank e=0.9``: ``ks.factorize(..., energy=0.9)`` (only where it saves),
  fine-tuned.

Dense models train with Adam 1e-3, batch 32; every fine-tune uses Adam 3e-4.

Reported: parameters, FLOPs per example (from ``ks.report``), the FLOP ratio
to dense, Keras CPU inference latency (``predict_on_batch``, batch 1 and
128, median over interleaved rounds, dense measured in the same run), the
measured speed-up and its ratio to the FLOP speed-up, and test accuracy
after the fine-tune (mean and spread over seeds).

Usage::

    python benchmarks/real_savings.py           # full (~15 min on 2 cores)
    python benchmarks/real_savings.py --quick   # smoke run (~2 min)
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

_common.quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sparse as ks  # noqa: E402
from _common import load_digits_split  # noqa: E402

VARIANTS = ("dense", "channels 50%", "columns 50%", "low-rank e=0.9")
TUNE_LR = 3e-4  # fine-tuning starts close to a good solution: a smaller Adam step


def settings(quick):
    if quick:
        return dict(seeds=1, dense_epochs=8, tune_epochs=3, rounds=3, calls_1=20, calls_128=5)
    return dict(seeds=3, dense_epochs=60, tune_epochs=15, rounds=7, calls_1=50, calls_128=10)


# ------------------------------------------------------------------ models
def digits_mlp():
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(300, activation="relu", name="hidden1"),
        keras.layers.Dense(100, activation="relu", name="hidden2"),
        keras.layers.Dense(10, name="classifier"),
    ], name="mlp")


def digits_cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(128, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="classifier"),
    ], name="cnn")


def wide_cnn(seed=0):
    model = keras.Sequential([
        keras.Input((32, 32, 32)),
        keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Conv2D(256, 3, padding="same", activation="relu", name="conv3"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(10, name="classifier"),
    ], name="wide_cnn")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not layer.weights:
            continue
        kernel, bias = layer.get_weights()
        fan_in, out = int(np.prod(kernel.shape[:-1])), kernel.shape[-1]
        k = min(fan_in, out)
        u, _ = np.linalg.qr(rng.standard_normal((fan_in, k)))
        v, _ = np.linalg.qr(rng.standard_normal((out, k)))
        s = np.arange(1, k + 1) ** -0.75
        matrix = (u * s) @ v.T * np.sqrt(out)
        layer.set_weights([matrix.reshape(kernel.shape).astype("float32"), bias])
    return model


HIDDEN = {"mlp": ["hidden1", "hidden2"], "cnn": ["conv1", "conv2", "hidden"],
          "wide_cnn": ["conv1", "conv2", "conv3"]}


def compile_model(model, learning_rate=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


# --------------------------------------------------------------- variants
class Result:
    """A variant's final model and how to feed it (dropped inputs)."""

    def __init__(self, model, kept_inputs=None):
        self.model = model
        self.kept_inputs = kept_inputs

    def inputs(self, x):
        if self.kept_inputs is None:
            return x
        return x.reshape(len(x), -1)[:, self.kept_inputs].reshape((len(x), -1))

    def accuracy(self, x, y):
        logits = self.model.predict(self.inputs(x), verbose=0, batch_size=256)
        return float(np.mean(np.argmax(logits, axis=-1) == y))


def fine_tune(model, data, epochs, seed):
    if data is None or epochs == 0:
        return model
    keras.utils.set_random_seed(seed)
    compile_model(model, TUNE_LR)
    model.fit(data[0], data[1], epochs=epochs, batch_size=32, verbose=0)
    return model


def make_variant(name, kind, dense, data, epochs, seed):
    x_train = data[0] if data is not None else None
    if name == "dense":
        return Result(dense)
    if name == "channels 50%":
        pruned = ks.prune_channels(dense, 0.5, scorer="l2_norm", layers=HIDDEN[kind])
        fine_tune(pruned, data, epochs, seed)
        return Result(ks.shrink(pruned))
    if name == "columns 50%":
        sample = x_train[:1024] if x_train is not None else None
        if kind == "wide_cnn":
            sample = None
        sampled = ks.sample_columns(dense, 0.5, "leverage", data=sample)
        fine_tune(sampled, data, epochs, seed)
        small, info = ks.shrink(sampled, return_info=True)
        kept = next(iter(info.kept_inputs.values())) if info.dropped_inputs else None
        return Result(small, kept)
    if name == "low-rank e=0.9":
        factored = ks.factorize(dense, energy=0.9)
        fine_tune(factored, data, epochs, seed)
        return Result(factored)
    raise ValueError(name)


def cost(model):
    totals = ks.report(model, print_fn=None).totals
    return int(totals["params"]), int(totals["effective_flops"] or 0)


# ----------------------------------------------------------------- timing
def time_calls(model, x, calls):
    model.predict_on_batch(x)  # trace / compile outside the timed calls
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_latency(results, example, plan):
    rng = np.random.default_rng(0)
    batches = {
        1: rng.standard_normal((1,) + example.shape).astype("float32"),
        128: rng.standard_normal((128,) + example.shape).astype("float32"),
    }

    def run_round(name, _):
        result = results[name]
        return {
            batch: time_calls(result.model, result.inputs(x), plan[f"calls_{batch}"])
            for batch, x in batches.items()
        }

    rounds = _common.interleave(list(results), plan["rounds"], run_round, log=None)
    return {
        name: {batch: _common.median(r[batch] for r in values) for batch in (1, 128)}
        for name, values in rounds.items()
    }


# -------------------------------------------------------------------- main
def run_model(kind, plan, log):
    if kind == "wide_cnn":
        dense = wide_cnn()
        results = {name: make_variant(name, kind, dense, None, 0, 0) for name in VARIANTS}
        accuracy = {name: [] for name in VARIANTS}
        example = np.zeros((32, 32, 32), "float32")
    else:
        accuracy = {name: [] for name in VARIANTS}
        results = None
        for seed in range(plan["seeds"]):
            x_train, x_test, y_train, y_test = load_digits_split(seed)
            if kind == "cnn":
                x_train, x_test = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
            keras.utils.set_random_seed(seed)
            dense = compile_model(digits_mlp() if kind == "mlp" else digits_cnn())
            dense.fit(x_train, y_train, epochs=plan["dense_epochs"], batch_size=32, verbose=0)
            seed_results = {
                name: make_variant(name, kind, dense, (x_train, y_train), plan["tune_epochs"], seed)
                for name in VARIANTS
            }
            for name, result in seed_results.items():
                accuracy[name].append(result.accuracy(x_test, y_test))
            log(f"  {kind} seed {seed}: " + ", ".join(
                f"{n} {100 * accuracy[n][-1]:.2f}%" for n in VARIANTS))
            if results is None:
                results = seed_results
        example = np.zeros(x_test.shape[1:], "float32")
    latency = measure_latency(results, example, plan)
    rows = []
    dense_params, dense_flops = cost(results["dense"].model)
    for name in VARIANTS:
        params, flops = cost(results[name].model)
        flop_ratio = dense_flops / flops if flops else float("nan")
        speedup = {b: latency["dense"][b] / latency[name][b] for b in (1, 128)}
        rows.append(dict(
            model=kind, variant=name, params=params, flops=flops, flop_ratio=flop_ratio,
            latency_ms_1=1e3 * latency[name][1], latency_ms_128=1e3 * latency[name][128],
            speedup_1=speedup[1], speedup_128=speedup[128],
            speedup_vs_flops_128=speedup[128] / flop_ratio if flop_ratio else float("nan"),
            accuracy=accuracy[name],
        ))
    return rows


def format_rows(rows):
    header = ["model", "variant", "params", "FLOPs", "FLOP ratio", "b1 ms", "b128 ms",
              "speed-up b1", "speed-up b128", "b128 / FLOP ratio", "test acc"]
    table = []
    for r in rows:
        acc = r["accuracy"]
        acc_text = "-" if not acc else (
            f"{100 * np.mean(acc):.2f}%" + (f" ± {100 * np.std(acc):.2f}" if len(acc) > 1 else ""))
        table.append([r["model"], r["variant"], f"{r['params']:,}", f"{r['flops']:,}",
                      f"{r['flop_ratio']:.2f}x", f"{r['latency_ms_1']:.3f}",
                      f"{r['latency_ms_128']:.2f}",
                      f"{r['speedup_1']:.2f}x", f"{r['speedup_128']:.2f}x",
                      f"{r['speedup_vs_flops_128']:.2f}", acc_text])
    return _common.format_table(header, table)


def main():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--models", default="mlp,cnn,wide_cnn")
    args = parser.parse_args()
    plan = settings(args.quick)
    print(f"Keras {keras.__version__} ({keras.backend.backend()}), plan {plan}")
    rows = []
    for kind in args.models.split(","):
        start = time.perf_counter()
        rows += run_model(kind, plan, print)
        print(f"{kind} done in {time.perf_counter() - start:.0f} s")
    table = format_rows(rows)
    print()
    print(table)
    name = "real_savings"
    if args.models != parser.get_default("models"):
        name += "_" + args.models.replace(",", "_")
    if args.quick:
        name += "_quick"  # git-ignored: smoke runs are not kept
    path = _common.write_json(name, {"plan": plan, "rows": rows, "table": table})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
