"""Training-step overhead of gradual magnitude pruning (GMP -> 90 %).

Compares, on synthetic data with batch 128:

* dense Keras 3;
* keras_sparse: ``ks.prune`` + ``PolynomialDecay(0 -> 0.9, frequency=100)``
  + ``ks.callbacks.Pruning()``;
* keras_sparse with a fixed mask (``OneShot(0)``: masked forward pass and the
  callback's per-batch work, no mask update in the timed window) -- a
  diagnostic row that separates the forward-pass cost from the update cost;
* tfmot ``prune_low_magnitude`` with the same schedule, when
  ``tensorflow_model_optimization`` and ``tf_keras`` are importable. Importing
  tfmot switches ``tf.keras`` to Keras 2 for the whole process, so it runs in
  a subprocess with ``TF_USE_LEGACY_KERAS=1`` against its own dense
  ``tf_keras`` baseline, and its ratio is to that baseline.

Models: MLP 784-300-100-10 and CNN conv32-pool-conv64-pool-dense10 on
28x28x1. Each variant keeps one model that trains through every round; a
round runs every variant for the same number of steps (order rotating), so
ratios are taken between runs made seconds apart. Step times come from a
timing callback (gap between consecutive ``on_train_batch_end`` calls), so a
mask update done in ``on_train_batch_begin`` is inside its step.

Reported per variant:

* ``median step``: median over rounds of the round's median step (update
  steps excluded) and its ratio to dense in the same round;
* ``mean step``: the same with the round's mean over *all* steps, mask
  updates included (the amortised cost over training);
* ``worst update``: the slowest mask-update step divided by the variant's
  median normal step (for dense the same step indices are used: a noise
  control);
* mask bytes per masked weight and parameter counts.

Usage::

    python benchmarks/pruning_overhead.py            # full run (~10 min)
    python benchmarks/pruning_overhead.py --quick    # smoke run (~1 min)
    python benchmarks/pruning_overhead.py --profile-update   # time one mask update
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
FREQUENCY = 100
TARGET = 0.9
MODELS = ("mlp", "cnn")
TFMOT_MARKER = "TFMOT_RESULT_JSON:"


# ---------------------------------------------------------------- set-up
def plan(quick):
    """Steps per round, rounds and warm-up steps.

    The warm-up (150 steps) traces the train function and contains the first
    mask update at a non-zero sparsity (step 100), which also pays one-time
    eager set-up; its time is reported separately. The timed GMP update steps
    (multiples of 100) then fall in the middle of rounds, never on a round's
    first step (which pays the data iterator start-up).
    """
    if quick:
        return {"rounds": 2, "steps": 40, "warmup": 150}
    return {"rounds": 7, "steps": 200, "warmup": 150}


def total_steps(p):
    return p["warmup"] + p["rounds"] * p["steps"]


def is_update_step(step, end_step):
    """GMP update steps, identical for keras_sparse and tfmot: every
    ``FREQUENCY`` steps from 0 up to ``end_step``."""
    return 0 <= step <= end_step and (step % FREQUENCY == 0 or step == end_step)


def synthetic_data(kind, steps, seed=0):
    return _common.overhead_data(kind, steps, seed)


def build_model(kind, k):
    """The benchmark model built with Keras module ``k`` (Keras 3 or tf_keras)."""
    return _common.overhead_model(kind, k)


def compile_model(model, k):
    model.compile(
        optimizer=k.optimizers.Adam(1e-3),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


class Variant:
    """One model trained round after round, with its timing callback."""

    def __init__(self, model, callbacks, timer_cls, get_step):
        self.model = model
        self.callbacks = callbacks
        self.timer_cls = timer_cls
        self.get_step = get_step

    def run(self, x, y, steps):
        timer = self.timer_cls()
        first = self.get_step(self.model)
        n = steps * BATCH
        self.model.fit(
            x[:n], y[:n], batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
            callbacks=[timer] + list(self.callbacks),
        )
        return {"first_step": first, "times": timer.times}


def _update_times(rnd, end_step, offset):
    return [t for i, t in enumerate(rnd["times"])
            if i > 0 and is_update_step(rnd["first_step"] + i + offset, end_step)]


def summarize(rounds_by_variant, baseline, end_step, warmups=None, step_offset=0):
    """Per-variant statistics and paired per-round ratios to ``baseline``.

    ``step_offset`` maps a batch's ``optimizer.iterations`` (read before the
    batch) to the step number its pruning code sees: 0 for keras_sparse (the
    callback uses ``iterations``), 1 for tfmot (its wrapper increments its own
    ``pruning_step`` before testing the schedule, so the update for step 100
    runs in the batch where ``iterations`` is 99).
    """
    per_round = {}
    for name, rounds in rounds_by_variant.items():
        stats = []
        for rnd in rounds:
            # Drop the first step of each fit (data iterator start-up).
            steps = [
                (rnd["first_step"] + i + step_offset, t)
                for i, t in enumerate(rnd["times"]) if i > 0
            ]
            normal = [t for s, t in steps if not is_update_step(s, end_step)]
            update = [t for s, t in steps if is_update_step(s, end_step)]
            stats.append({
                "median": _common.median(normal),
                "mean": sum(t for _, t in steps) / len(steps),
                "update": update,
            })
        per_round[name] = stats
    summary = {}
    base = per_round[baseline]
    for name, stats in per_round.items():
        normal_median = _common.median(s["median"] for s in stats)
        updates = [t for s in stats for t in s["update"]]
        summary[name] = {
            "median_step_ms": 1e3 * normal_median,
            "mean_step_ms": 1e3 * _common.median(s["mean"] for s in stats),
            "median_ratio": _common.median(
                s["median"] / b["median"] for s, b in zip(stats, base)),
            "mean_ratio": _common.median(
                s["mean"] / b["mean"] for s, b in zip(stats, base)),
            "update_steps_timed": len(updates),
            "update_ms": [1e3 * t for t in updates],
            "worst_update_ms": 1e3 * max(updates) if updates else None,
            "worst_update_ratio": max(updates) / normal_median if updates else None,
            "median_update_ratio": (
                _common.median(updates) / normal_median if updates else None),
            "warmup_update_ms": (
                [1e3 * t for t in _update_times(warmups[name], end_step, step_offset)]
                if warmups else []),
            "per_round_median_ms": [1e3 * s["median"] for s in stats],
            "per_round_mean_ms": [1e3 * s["mean"] for s in stats],
        }
    return summary


def interleaved_run(variants, data, p, log):
    x, y = data
    warmups = {}
    for name, variant in variants.items():
        log(f"  warm-up {name}")
        warmups[name] = variant.run(x, y, p["warmup"])
    rounds = _common.interleave(
        variants, p["rounds"], lambda name, r: variants[name].run(x, y, p["steps"]), log=log)
    return warmups, rounds


# ------------------------------------------------------------ keras_sparse
def run_keras3(kind, p, log):
    import warnings

    import keras

    import keras_sparse as ks
    from _common import sparse_layers

    # The schedule spans every round, so each round's fit (correctly) warns
    # that it alone does not reach the target.
    warnings.filterwarnings("ignore", message="These layers will not reach")
    warnings.filterwarnings("ignore", message="Training ended below the target")
    end_step = total_steps(p)
    timer_cls = _common.make_step_timer(keras.callbacks.Callback)

    def step_of(model):
        return int(keras.ops.convert_to_numpy(model.optimizer.iterations))

    keras.utils.set_random_seed(0)
    dense = build_model(kind, keras)
    variants = {}
    compile_model(dense, keras)
    variants["dense"] = Variant(dense, [], timer_cls, step_of)

    gmp = ks.prune(
        dense, TARGET,
        schedule=ks.schedules.PolynomialDecay(
            0.0, TARGET, begin_step=0, end_step=end_step, frequency=FREQUENCY),
    )
    compile_model(gmp, keras)
    variants["keras_sparse GMP"] = Variant(gmp, [ks.callbacks.Pruning()], timer_cls, step_of)

    fixed = ks.prune(dense, TARGET, schedule=ks.schedules.OneShot(0))
    compile_model(fixed, keras)
    variants["keras_sparse fixed mask"] = Variant(
        fixed, [ks.callbacks.Pruning()], timer_cls, step_of)

    warmups, rounds = interleaved_run(
        variants, synthetic_data(kind, max(p["steps"], p["warmup"])), p, log)
    summary = summarize(rounds, "dense", end_step, warmups)

    mask_bytes = weights = kept = 0
    for layer in sparse_layers(gmp):
        for name in layer.sparse_weight_names:
            mask = layer.get_mask(name)
            size = int(np.prod(mask.shape))
            mask_bytes += size * np.dtype(mask.dtype).itemsize
            weights += size
            kept += int(np.count_nonzero(keras.ops.convert_to_numpy(mask)))
    summary["keras_sparse GMP"].update({
        "mask_dtype": str(sparse_layers(gmp)[0].get_mask("kernel").dtype),
        "mask_bytes": mask_bytes,
        "masked_weights": weights,
        "mask_bytes_per_weight": mask_bytes / weights,
        "params": int(gmp.count_params()),
        "final_sparsity": 1.0 - kept / weights,
    })
    summary["dense"]["params"] = int(dense.count_params())
    return summary


# ------------------------------------------------------------------- tfmot
def tfmot_available():
    return _common.tfmot_available()


def run_tfmot_subprocess(kind, p, log):
    return _common.run_legacy_worker(__file__, kind, p, TFMOT_MARKER, log)


def tfmot_worker(kind, p):
    """Runs inside the TF_USE_LEGACY_KERAS=1 subprocess."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    end_step = total_steps(p)
    timer_cls = _common.make_step_timer(tf_keras.callbacks.Callback)

    def step_of(model):
        return int(tf_keras.backend.get_value(model.optimizer.iterations))

    tf_keras.utils.set_random_seed(0)
    dense = build_model(kind, tf_keras)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        tf_keras.models.clone_model(dense),
        pruning_schedule=tfmot.sparsity.keras.PolynomialDecay(
            0.0, TARGET, begin_step=0, end_step=end_step, frequency=FREQUENCY),
    )
    compile_model(dense, tf_keras)
    compile_model(pruned, tf_keras)
    variants = {
        "tf_keras dense": Variant(dense, [], timer_cls, step_of),
        "tfmot GMP": Variant(
            pruned, [tfmot.sparsity.keras.UpdatePruningStep()], timer_cls, step_of),
    }
    warmups, rounds = interleaved_run(
        variants, synthetic_data(kind, max(p["steps"], p["warmup"])), p, log)
    summary = summarize(rounds, "tf_keras dense", end_step, warmups, step_offset=1)

    mask_bytes = weights = 0
    for var in pruned.non_trainable_weights:
        if var.name.split("/")[-1].startswith("mask"):
            size = int(np.prod(var.shape))
            mask_bytes += size * var.dtype.size
            weights += size
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    kept = sum(int(np.count_nonzero(w)) for w in stripped.get_weights() if w.ndim > 1)
    total = sum(w.size for w in stripped.get_weights() if w.ndim > 1)
    summary["tfmot GMP"].update({
        "mask_dtype": "float32",
        "mask_bytes": mask_bytes,
        "masked_weights": weights,
        "mask_bytes_per_weight": mask_bytes / weights if weights else None,
        "params": int(pruned.count_params()),
        "final_sparsity": 1.0 - kept / total,
    })
    summary["tf_keras dense"]["params"] = int(dense.count_params())
    summary["versions"] = {"tfmot": tfmot.__version__, "tf_keras": tf_keras.__version__,
                           "tensorflow": tf.__version__}
    print(TFMOT_MARKER + json.dumps(summary), flush=True)


# --------------------------------------------------------------- profiling
def sort_threshold_mask(scores, sparsity):
    """Reference for the profile: the same mask as ``ks.ops.topk_mask`` (keep
    the ``n - round(sparsity * n)`` largest, ties to the lower flat index),
    computed on the host with one ``np.sort`` for the threshold."""
    values = np.asarray(scores, dtype=np.float32).reshape(-1)
    n = values.shape[0]
    keep = n - int(round(sparsity * n))
    if keep >= n:
        return np.ones(np.shape(scores), dtype=bool)
    if keep <= 0:
        return np.zeros(np.shape(scores), dtype=bool)
    kth = np.sort(values)[n - keep]
    mask = values > kth
    need = keep - int(np.count_nonzero(mask))
    if need:
        mask[np.flatnonzero(values == kth)[:need]] = True
    return mask.reshape(np.shape(scores))


def profile_update(kinds, log, repeats=15):
    """Time ``Pruning.update_masks`` (one GMP mask update of every layer,
    eager, as in ``fit``) and its parts on the benchmark models, at three
    points of the schedule. Returns a list of rows."""
    import time

    import keras

    import keras_sparse as ks
    from _common import sparse_layers

    def timed(fn):
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * _common.median(times)

    rows = []
    for kind in kinds:
        keras.utils.set_random_seed(0)
        model = ks.prune(build_model(kind, keras), TARGET, schedule=ks.schedules.PolynomialDecay(
            0.0, TARGET, begin_step=0, end_step=1000, frequency=FREQUENCY))
        compile_model(model, keras)
        callback = ks.callbacks.Pruning()
        callback.set_model(model)
        callback.on_train_begin()
        layers = sparse_layers(model)
        big = max(layers, key=lambda layer: int(np.prod(layer.get_mask("kernel").shape)))
        for step in (100, 500, 900):
            sparsity = big.schedule.sparsity(step)
            scores = big.score_weight("kernel")
            mask = big.compute_mask_for("kernel", sparsity, scores)
            row = {
                "model": kind, "step": step, "sparsity": sparsity,
                "update_masks_ms": timed(lambda: callback.update_masks(step)),
                "largest_kernel": tuple(int(d) for d in big.get_mask("kernel").shape),
                "score_ms": timed(lambda: big.score_weight("kernel")),
                "topk_mask_ms": timed(lambda: ks.ops.topk_mask(scores, sparsity)),
                "set_mask_ms": timed(lambda: big.set_mask("kernel", mask)),
                "read_iterations_ms": timed(
                    lambda: int(keras.ops.convert_to_numpy(model.optimizer.iterations))),
            }
            flat = np.abs(keras.ops.convert_to_numpy(scores)).reshape(-1)
            row["numpy_sort_ms"] = timed(lambda: np.sort(flat))
            expected = keras.ops.convert_to_numpy(ks.ops.topk_mask(scores, sparsity))
            proposed = sort_threshold_mask(keras.ops.convert_to_numpy(scores), sparsity)
            row["sort_threshold_equal"] = bool((expected == proposed).all())
            row["sort_threshold_mask_ms"] = timed(lambda: keras.ops.convert_to_tensor(
                sort_threshold_mask(keras.ops.convert_to_numpy(scores), sparsity)))
            rows.append(row)
            log(f"  {kind} step {step} (sparsity {sparsity:.2f}): update_masks "
                f"{row['update_masks_ms']:.2f} ms")
    return rows


PROFILE_HEADER = ["model", "step", "sparsity", "update_masks ms (all layers)", "largest kernel",
                  "score ms", "topk_mask ms", "set_mask ms", "np.sort ms",
                  "np.sort threshold mask ms (same mask?)", "read iterations ms"]


def profile_table(rows):
    return [[r["model"], r["step"], f"{r['sparsity']:.2f}", f"{r['update_masks_ms']:.2f}",
             "x".join(map(str, r["largest_kernel"])), f"{r['score_ms']:.2f}",
             f"{r['topk_mask_ms']:.2f}", f"{r['set_mask_ms']:.2f}",
             f"{r['numpy_sort_ms']:.2f}",
             f"{r['sort_threshold_mask_ms']:.2f} ({'yes' if r['sort_threshold_equal'] else 'NO'})",
             f"{r['read_iterations_ms']:.3f}"] for r in rows]


# ------------------------------------------------------------------ report
def _fmt_ratio(value):
    return "–" if value is None else f"{value:.2f}×"


def table_rows(results):
    rows = []
    for kind in MODELS:
        res = results.get(kind)
        if res is None:
            continue
        for name, base in (("dense", None), ("keras_sparse GMP", "dense"),
                           ("keras_sparse fixed mask", "dense"),
                           ("tf_keras dense", None), ("tfmot GMP", "tf_keras dense")):
            s = res.get(name)
            if not s or "median_step_ms" not in s:
                continue
            bpw = s.get("mask_bytes_per_weight")
            first = s.get("warmup_update_ms") or []
            rows.append([
                "MLP 784-300-100-10" if kind == "mlp" else "CNN conv32-pool-conv64-pool-dense10",
                name,
                f"{s['median_step_ms']:.2f}",
                _fmt_ratio(s["median_ratio"]) if base else "1.00×",
                _fmt_ratio(s["mean_ratio"]) if base else "1.00×",
                _fmt_ratio(s["median_update_ratio"]),
                _fmt_ratio(s["worst_update_ratio"]),
                f"{first[0]:.1f}" if first else "–",
                "–" if bpw is None else f"{bpw:g}",
                f"{s['params']:,}" if "params" in s else "–",
            ])
    return rows


HEADER = ["model", "variant", "median step ms", "step ratio", "mean ratio incl. updates",
          "median update / normal", "worst update / normal", "first update ms",
          "mask B/weight", "params"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke run")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated subset of: mlp,cnn")
    parser.add_argument("--no-tfmot", action="store_true", help="skip the tfmot comparison")
    parser.add_argument("--output", default=None,
                        help="results file name (default pruning_overhead[_quick])")
    parser.add_argument("--profile-update", action="store_true",
                        help="only time one mask update and its parts (no training)")
    parser.add_argument("--tfmot-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.tfmot_worker:
        return tfmot_worker(args.tfmot_worker, json.loads(args.plan))

    def log(msg):
        print(msg, flush=True)

    p = plan(args.quick)
    kinds = [k for k in args.models.split(",") if k]
    if args.profile_update:
        rows = profile_update(kinds, log)
        table = _common.format_table(
            PROFILE_HEADER, profile_table(rows),
            title="One GMP mask update (Pruning.update_masks, eager) and its parts on the "
                  "largest kernel; median of 15 calls")
        print()
        print(table)
        path = _common.write_json(args.output or "pruning_update_profile",
                                  {"rows": rows, "table": table})
        print(f"\nwrote {path}")
        return
    use_tfmot = not args.no_tfmot and tfmot_available()
    if not args.no_tfmot and not use_tfmot:
        log("tensorflow_model_optimization / tf_keras not importable: tfmot rows skipped "
            "(pip install tensorflow-model-optimization tf-keras)")
    results = {}
    for kind in kinds:
        log(f"{kind}: {p['rounds']} rounds x {p['steps']} steps, batch {BATCH}")
        results[kind] = run_keras3(kind, p, log)
        if use_tfmot:
            log(f"{kind}: tfmot in a TF_USE_LEGACY_KERAS=1 subprocess")
            results[kind].update(run_tfmot_subprocess(kind, p, log))

    title = (f"GMP -> {TARGET:.0%} (frequency {FREQUENCY}), batch {BATCH}, synthetic data, "
             f"{p['rounds']} interleaved rounds x {p['steps']} steps; ratios are paired "
             "per round and the median is taken over rounds; tfmot's ratios are to its own "
             "tf_keras dense run. Update columns: the GMP update steps "
             f"({FREQUENCY}, 200, ...) against the variant's median normal step; on the dense "
             "and fixed-mask rows the same step indices are a noise control. 'first update': "
             "the step-100 update, in the warm-up (one-time eager set-up).")
    table = _common.format_table(HEADER, table_rows(results), title=title)
    print()
    print(table)
    name = args.output or ("pruning_overhead_quick" if args.quick else "pruning_overhead")
    path = _common.write_json(name, {
        "settings": {"batch": BATCH, "frequency": FREQUENCY, "target_sparsity": TARGET,
                     "end_step": total_steps(p), **p},
        "results": results,
        "table": table,
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
