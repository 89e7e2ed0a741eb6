"""Cost of dynamic sparse training, for ``sparse_training.py``.

The mean training-step time of RigL (ΔT = 100) against GMP (updates every
100 steps) and dense on the digits MLP, in interleaved rounds, and the time
of one RigL / SET drop-and-grow update of a 1024 x 1024 Dense kernel
(1,048,576 weights). Run through ``sparse_training.py --timing-only``.

``sparse_training.py`` passes its batch size, update interval and compile
function in, so this module does not import it (no import cycle).
"""

import time

import keras
import numpy as np

import _common
import keras_sparse as ks
from _common import digits_mlp
from _common import sparse_layers


def _timing_model(method, total, delta_t, compile_model):
    keras.utils.set_random_seed(0)
    model = digits_mlp()
    callbacks = []
    if method == "gmp":
        model = ks.prune(model, 0.9, schedule=ks.schedules.PolynomialDecay(
            0.0, 0.9, begin_step=0, end_step=total, frequency=delta_t))
        callbacks = [ks.callbacks.Pruning(log_per_layer=False)]
    elif method == "rigl":
        model = ks.prune(model, 0.9, distribution="erk")
        callbacks = [ks.callbacks.RigL(update_freq=delta_t, end_step=total, seed=0,
                                       log_per_layer=False)]
    return compile_model(model), callbacks


def step_time(rounds, steps, log, *, batch, delta_t, compile_model):
    """Step time per variant in interleaved rounds (ratios paired per round).

    The machine is shared, so a plain mean is dominated by stray slow steps.
    Per round we take the median of the ordinary steps and the median of the
    update steps, and report the *amortized* step time
    ``median + (update - median) / ΔT``, the mean a quiet machine would see.
    ``compile_model(model)`` compiles a model with the benchmark's optimizer
    and returns it.
    """
    timer_cls = _common.make_step_timer(keras.callbacks.Callback)
    rng = np.random.default_rng(0)
    x = rng.random((steps * batch, 64), dtype=np.float32)
    y = rng.integers(0, 10, steps * batch)
    total = (rounds + 1) * steps * 4
    variants = {name: _timing_model(name, total, delta_t, compile_model)
                for name in ("dense", "gmp", "rigl")}

    def run(name, _round):
        model, callbacks = variants[name]
        timer = timer_cls()
        first = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                  callbacks=[timer] + callbacks)
        # Skip each fit's first step (iterator start-up, first trace).
        times = timer.times[1:]
        is_update = [(first + i + 1) % delta_t == 0 for i in range(len(times))]
        normal = float(np.median([t for t, u in zip(times, is_update) if not u]))
        updates = [t for t, u in zip(times, is_update) if u]
        update = float(np.median(updates)) if updates else normal
        return {"median": normal, "update": update,
                "amortized": normal + (update - normal) / delta_t,
                "mean": float(np.mean(times))}

    for name in variants:
        log(f"  warm-up {name}")
        run(name, -1)
    rounds_out = _common.interleave(variants, rounds, run, log=log)
    summary = {}
    for name, rs in rounds_out.items():
        summary[name] = {
            "median_step_ms": 1e3 * _common.median(r["median"] for r in rs),
            "update_step_ms": 1e3 * _common.median(r["update"] for r in rs),
            "amortized_step_ms": 1e3 * _common.median(r["amortized"] for r in rs),
            "raw_mean_step_ms": 1e3 * _common.median(r["mean"] for r in rs),
            "amortized_ratio_to_gmp": _common.median(
                r["amortized"] / g["amortized"] for r, g in zip(rs, rounds_out["gmp"])),
            "median_ratio_to_gmp": _common.median(
                r["median"] / g["median"] for r, g in zip(rs, rounds_out["gmp"])),
            "amortized_ratio_to_dense": _common.median(
                r["amortized"] / d["amortized"] for r, d in zip(rs, rounds_out["dense"])),
            "rounds": rs,
        }
    return summary


def update_time(repeats, log, *, compile_model):
    """One drop-and-grow update of a 1024 x 1024 kernel at 90 % sparsity.

    The RigL update reads the dense gradient from the layers' gradient
    probes: the sparse layers get them (``enable_gradient_probe``) before
    the model is compiled, so the callbacks neither add nor remove them.
    """
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024, name="big"),
                              keras.layers.Dense(10)])
    model = ks.prune(model, 0.9)
    for layer in sparse_layers(model):
        layer.enable_gradient_probe()
    compile_model(model)
    rng = np.random.default_rng(0)
    x = rng.random((256, 1024), dtype=np.float32)
    y = rng.integers(0, 10, 256)
    out = {}
    for name, cls in (("rigl", ks.callbacks.RigL), ("set", ks.callbacks.SET)):
        callback = cls(update_freq=10**6, end_step=10**7, seed=0)
        # One epoch with the callback: it plans its layers and the probes
        # hold the last step's gradient afterwards.
        model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[callback])
        layer = sparse_layers(model)[0]
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            callback.update_layer(layer, 1000)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[name] = {"weights": int(np.prod(layer.kernel.shape)),
                     "median_wall_ms": 1e3 * float(np.median(wall)),
                     "min_wall_ms": 1e3 * float(np.min(wall)),
                     "median_cpu_ms": 1e3 * float(np.median(cpu))}
        log(f"  {name} update: median {out[name]['median_wall_ms']:.1f} ms wall, "
            f"{out[name]['median_cpu_ms']:.1f} ms CPU")
    return out


def timing_table(steps_summary, updates, *, batch, delta_t):
    header = ["variant", "median step ms", "update step ms", "amortized ms", "x GMP (amortized)",
              "x GMP (median)", "x dense (amortized)"]
    body = []
    for name, s in steps_summary.items():
        body.append([name, f"{s['median_step_ms']:.3f}", f"{s['update_step_ms']:.1f}",
                     f"{s['amortized_step_ms']:.3f}", f"{s['amortized_ratio_to_gmp']:.3f}",
                     f"{s['median_ratio_to_gmp']:.3f}", f"{s['amortized_ratio_to_dense']:.3f}"])
    table = _common.format_table(
        header, body,
        title=(f"Training-step time, MLP 64-300-100-10, batch {batch}, updates every "
               f"{delta_t} steps; amortized = median + (update - median) / {delta_t}; "
               "ratios paired per interleaved round"))
    header2 = ["algorithm", "weights", "median ms (wall)", "min ms (wall)", "median ms (CPU)"]
    body2 = [[name, f"{u['weights']:,}", f"{u['median_wall_ms']:.1f}",
              f"{u['min_wall_ms']:.1f}", f"{u['median_cpu_ms']:.1f}"]
             for name, u in updates.items()]
    table2 = _common.format_table(
        header2, body2, title="One drop-and-grow update of a 1024 x 1024 kernel (90 % sparse)")
    return table, table2
