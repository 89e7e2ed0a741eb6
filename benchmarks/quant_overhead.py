"""Training-step overhead of quantization-aware training (binary, 8-bit).

The protocol of ``pruning_overhead.py``: batch 128, synthetic data, models
MLP 784-300-100-10 and CNN conv32-pool-conv64-pool-dense10 on 28x28x1,
Adam 1e-3. Each variant keeps one model that trains through every round; a
round runs every variant for the same number of steps (order rotating), so
ratios are taken between runs made seconds apart. Step times come from the
shared timing callback (gap between consecutive ``on_train_batch_end``).

Variants (every layer with a kernel is quantized, first and last included):

* ``dense``: Keras 3, float;
* ``binary weights``: ``ks.quantize(model, "binary")`` (``ste_sign``
  kernels, latent weights trained by Adam);
* ``binary weights, Bop``: the same trained by ``ks.optimizers.Bop`` on the
  kernels and Adam on the biases through ``ks.optimizers.CaseOptimizer``;
* ``binary w+a``: ``ks.quantize(model, "binary", activations="ste_sign")``;
* ``8-bit weights``: ``ks.quantize(model, 8)`` (``Uniform(8)``, per channel);
* ``8-bit w+a``: ``ks.quantize(model, 8, activations=8)`` -- what tfmot's
  default 8-bit QAT quantizes (weights and activations);
* ``binary weights, op by op`` / ``8-bit weights, op by op`` (TensorFlow
  only): the quantizer and mask of each kernel run op by op instead of as
  one fused XLA function (``Quantizer.fusable = False``), the library's
  default before that choice was measured.
* ``dense, XLA`` / ``binary weights, XLA`` / ``8-bit weights, XLA``
  (TensorFlow only): the same models compiled with ``jit_compile=True``
  (TensorFlow runs ``fit`` without XLA on a CPU by default); the ``dense,
  XLA`` ratio is to ``dense``, the quantized XLA ratios to ``dense, XLA``.
* tfmot ``quantize_model`` (8-bit QAT), when ``tensorflow_model_optimization``
  and ``tf_keras`` are importable, in a ``TF_USE_LEGACY_KERAS=1`` subprocess
  against its own dense ``tf_keras`` baseline; its ratio is to that baseline.

Reported per variant: the median over rounds of the round's median step and
its ratio to dense in the same round (paired), the same with the round's
mean, and parameter counts.

Usage::

    python benchmarks/quant_overhead.py            # full run (~10 min)
    python benchmarks/quant_overhead.py --quick    # smoke run (~1 min)
    KERAS_BACKEND=jax python benchmarks/quant_overhead.py   # the same on JAX (no tfmot rows)
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

_common.quiet_tensorflow()

import numpy as np  # noqa: E402

BATCH = _common.OVERHEAD_BATCH
MODELS = ("mlp", "cnn")
TFMOT_MARKER = "TFMOT_RESULT_JSON:"
TARGETS = {"binary weights": 1.10, "8-bit w+a": 1.15, "8-bit weights": 1.15}
TFMOT_ANCHOR = {"mlp": 1.27, "cnn": 1.26}


def plan(quick):
    if quick:
        return {"rounds": 2, "steps": 30, "warmup": 20}
    return {"rounds": 7, "steps": 200, "warmup": 50}


def synthetic_data(kind, steps, seed=0):
    return _common.overhead_data(kind, steps, seed)


def build_model(kind, k):
    """The benchmark model built with Keras module ``k`` (Keras 3 or tf_keras)."""
    return _common.overhead_model(kind, k)


def compile_model(model, k, optimizer=None, jit_compile=None):
    extra = {} if jit_compile is None else {"jit_compile": jit_compile}
    model.compile(
        optimizer=optimizer or k.optimizers.Adam(1e-3),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        **extra,
    )


class Variant:
    """One model trained round after round, with its timing callback."""

    def __init__(self, model, timer_cls):
        self.model = model
        self.timer_cls = timer_cls

    def run(self, x, y, steps):
        timer = self.timer_cls()
        n = steps * BATCH
        self.model.fit(x[:n], y[:n], batch_size=BATCH, epochs=1, shuffle=False,
                       verbose=0, callbacks=[timer])
        # Drop the first step of each fit (data iterator start-up).
        return timer.times[1:]


def interleaved_run(variants, data, p, log):
    x, y = data
    for name, variant in variants.items():
        log(f"  warm-up {name}")
        variant.run(x, y, p["warmup"])
    return _common.interleave(
        variants, p["rounds"], lambda name, r: variants[name].run(x, y, p["steps"]), log=log)


def summarize(rounds, baseline):
    base = rounds[baseline]
    summary = {}
    for name, per_round in rounds.items():
        medians = [_common.median(times) for times in per_round]
        means = [sum(times) / len(times) for times in per_round]
        base_medians = [_common.median(times) for times in base]
        base_means = [sum(times) / len(times) for times in base]
        summary[name] = {
            "median_step_ms": 1e3 * _common.median(medians),
            "mean_step_ms": 1e3 * _common.median(means),
            "median_ratio": _common.median(m / b for m, b in zip(medians, base_medians)),
            "mean_ratio": _common.median(m / b for m, b in zip(means, base_means)),
            "per_round_median_ms": [1e3 * m for m in medians],
        }
    return summary


# ------------------------------------------------------------ keras_sparse
def run_keras3(kind, p, log):
    import keras

    import keras_sparse as ks

    timer_cls = _common.make_step_timer(keras.callbacks.Callback)
    keras.utils.set_random_seed(0)
    dense = build_model(kind, keras)
    compile_model(dense, keras)
    models = {"dense": dense}
    models["binary weights"] = ks.quantize(dense, "binary")
    models["binary weights, Bop"] = ks.quantize(dense, "binary")
    models["binary w+a"] = ks.quantize(dense, "binary", activations="ste_sign")
    models["8-bit weights"] = ks.quantize(dense, 8)
    models["8-bit w+a"] = ks.quantize(dense, 8, activations=8)
    if keras.backend.backend() == "tensorflow":
        # The measured design decision: each large kernel's quantizer and
        # mask run as one XLA function; "op by op" turns that off.
        for name, weights in (("binary weights, op by op", "binary"),
                              ("8-bit weights, op by op", 8)):
            models[name] = ks.quantize(dense, weights)
            for layer in _common.sparse_layers(models[name]):
                layer.kernel_quantizer.fusable = False
        # TensorFlow runs `fit` without XLA on a CPU unless asked; with
        # compile(jit_compile=True) the whole step is fused.
        models["dense, XLA"] = build_model(kind, keras)
        models["dense, XLA"].set_weights(dense.get_weights())
        models["binary weights, XLA"] = ks.quantize(dense, "binary")
        models["8-bit weights, XLA"] = ks.quantize(dense, 8)
    variants = {}
    for name, model in models.items():
        if name == "binary weights, Bop":
            optimizer = ks.optimizers.CaseOptimizer(
                (ks.optimizers.PathMatches(r"kernel$"), ks.optimizers.Bop()),
                default=keras.optimizers.Adam(1e-3))
        else:
            optimizer = keras.optimizers.Adam(1e-3)
        compile_model(model, keras, optimizer,
                      jit_compile=True if name.endswith("XLA") else None)
        variants[name] = Variant(model, timer_cls)

    rounds = interleaved_run(variants, synthetic_data(kind, max(p["steps"], p["warmup"])), p, log)
    summary = summarize(rounds, "dense")
    if "dense, XLA" in rounds:
        xla = summarize(rounds, "dense, XLA")
        for name in ("binary weights, XLA", "8-bit weights, XLA"):
            summary[name] = xla[name]
    for name, model in models.items():
        summary[name]["params"] = int(model.count_params())
        summary[name]["trainable_params"] = int(
            sum(np.prod(v.shape) for v in model.trainable_variables))
    return summary


# ------------------------------------------------------------------- tfmot
def tfmot_available():
    return _common.tfmot_available()


def run_tfmot_subprocess(kind, p, log):
    result = _common.run_legacy_worker(__file__, kind, p, TFMOT_MARKER, log)
    if "error" in result:
        return {"tfmot error": result["error"]}
    return result


def tfmot_worker(kind, p):
    """Runs inside the TF_USE_LEGACY_KERAS=1 subprocess."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    timer_cls = _common.make_step_timer(tf_keras.callbacks.Callback)
    tf_keras.utils.set_random_seed(0)
    dense = build_model(kind, tf_keras)
    qat = tfmot.quantization.keras.quantize_model(tf_keras.models.clone_model(dense))
    compile_model(dense, tf_keras)
    compile_model(qat, tf_keras)
    variants = {"tf_keras dense": Variant(dense, timer_cls),
                "tfmot 8-bit QAT": Variant(qat, timer_cls)}
    rounds = interleaved_run(variants, synthetic_data(kind, max(p["steps"], p["warmup"])), p, log)
    summary = summarize(rounds, "tf_keras dense")
    summary["tf_keras dense"]["params"] = int(dense.count_params())
    summary["tfmot 8-bit QAT"]["params"] = int(qat.count_params())
    summary["versions"] = {"tfmot": tfmot.__version__, "tf_keras": tf_keras.__version__,
                           "tensorflow": tf.__version__}
    print(TFMOT_MARKER + json.dumps(summary), flush=True)


def _backend():
    import keras

    return keras.backend.backend()


# ------------------------------------------------------------------ report
ROWS = (("dense", None), ("binary weights", "dense"), ("binary weights, Bop", "dense"),
        ("binary w+a", "dense"), ("8-bit weights", "dense"), ("8-bit w+a", "dense"),
        ("binary weights, op by op", "dense"), ("8-bit weights, op by op", "dense"),
        ("dense, XLA", "dense"), ("binary weights, XLA", "dense, XLA"),
        ("8-bit weights, XLA", "dense, XLA"),
        ("tf_keras dense", None), ("tfmot 8-bit QAT", "tf_keras dense"))
HEADER = ["model", "variant", "median step ms", "step ratio", "mean ratio", "target",
          "params"]


def table_rows(results):
    rows = []
    for kind in MODELS:
        res = results.get(kind)
        if res is None:
            continue
        for name, base in ROWS:
            s = res.get(name)
            if not s or "median_step_ms" not in s:
                continue
            target = TARGETS.get(name)
            if name == "tfmot 8-bit QAT":
                target_text = f"ANCHORS {TFMOT_ANCHOR[kind]:.2f}×"
            elif target:
                met = "met" if s["median_ratio"] <= target else "MISSED"
                target_text = f"≤ {target:.2f}× ({met})"
            else:
                target_text = "–"
            rows.append([
                "MLP 784-300-100-10" if kind == "mlp" else "CNN conv32-pool-conv64-pool-dense10",
                name, f"{s['median_step_ms']:.2f}",
                f"{s['median_ratio']:.2f}×" if base else "1.00×",
                f"{s['mean_ratio']:.2f}×" if base else "1.00×",
                target_text, f"{s['params']:,}" if "params" in s else "–",
            ])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke run")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated subset of: mlp,cnn")
    parser.add_argument("--no-tfmot", action="store_true", help="skip the tfmot comparison")
    parser.add_argument("--output", default=None,
                        help="results file name (default quant_overhead[_<backend>][_quick])")
    parser.add_argument("--tfmot-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.tfmot_worker:
        return tfmot_worker(args.tfmot_worker, json.loads(args.plan))

    def log(msg):
        print(msg, flush=True)

    p = plan(args.quick)
    kinds = [k for k in args.models.split(",") if k]
    # tfmot runs on TensorFlow; its rows compare with the TensorFlow backend.
    use_tfmot = not args.no_tfmot and tfmot_available() and _backend() == "tensorflow"
    if not args.no_tfmot and not use_tfmot:
        log("tfmot rows skipped: " + (
            "they are measured with the TensorFlow backend" if tfmot_available() else
            "tensorflow_model_optimization / tf_keras not importable "
            "(pip install tensorflow-model-optimization tf-keras)"))
    results = {}
    for kind in kinds:
        log(f"{kind}: {p['rounds']} rounds x {p['steps']} steps, batch {BATCH}")
        results[kind] = run_keras3(kind, p, log)
        if use_tfmot:
            log(f"{kind}: tfmot in a TF_USE_LEGACY_KERAS=1 subprocess")
            results[kind].update(run_tfmot_subprocess(kind, p, log))

    import keras

    backend = keras.backend.backend()
    title = (f"Quantization-aware training, Keras backend {backend}, batch {BATCH}, "
             "synthetic data, Adam 1e-3, "
             f"{p['rounds']} interleaved rounds x {p['steps']} steps; ratios are paired per "
             "round, median over rounds; tfmot's ratio is to its own tf_keras dense run. "
             "Every layer with a kernel is quantized.")
    table = _common.format_table(HEADER, table_rows(results), title=title)
    print()
    print(table)
    name = args.output or ("quant_overhead" + ("" if backend == "tensorflow" else "_" + backend)
                           + ("_quick" if args.quick else ""))
    path = _common.write_json(name, {
        "settings": {"batch": BATCH, **p},
        "results": results,
        "table": table,
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
