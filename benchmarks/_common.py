"""Helpers shared by the benchmark scripts: interleaved timing, a per-step
timing callback, JSON results and plain-text tables.

Nothing here imports Keras at module level, so the tfmot worker (which runs
with ``TF_USE_LEGACY_KERAS=1`` and ``tf_keras``) can use it too.
"""

import datetime
import json
import os
import platform
import statistics
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def quiet_tensorflow():
    """Silence TensorFlow's C++ start-up chatter (call before importing it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def make_step_timer(callback_base):
    """A timing callback class built on ``callback_base`` (Keras 3's or
    tf_keras' ``Callback``).

    It records a ``time.perf_counter()`` stamp at the end of every training
    batch; a step's time is the gap between two consecutive stamps, so it
    covers everything that runs for that batch: every callback's
    ``on_train_batch_begin`` (where mask updates happen), the train step and
    the ``on_train_batch_end`` hooks. Put it *first* in the callback list.
    The first batch of each ``fit`` is measured from ``on_train_batch_begin``
    and is reported separately (it also pays the data iterator start-up).
    """

    class StepTimer(callback_base):
        def __init__(self):
            super().__init__()
            self.times = []
            self._last = None

        def on_train_begin(self, logs=None):
            self._last = None

        def on_train_batch_begin(self, batch, logs=None):
            if self._last is None:
                self._last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            self.times.append(now - self._last)
            self._last = now

    return StepTimer


def interleave(variants, rounds, run_round, log=print):
    """Run ``run_round(name, round_index)`` for every variant in every round.

    The order of the variants rotates from round to round so no variant is
    always first (machine noise and warm caches then spread evenly).

    Returns:
        dict name -> list of whatever ``run_round`` returned, one per round.
    """
    names = list(variants)
    out = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        start = time.perf_counter()
        for name in order:
            out[name].append(run_round(name, r))
        if log is not None:
            log(f"  round {r + 1}/{rounds} done in {time.perf_counter() - start:.1f} s")
    return out


def median(values):
    values = list(values)
    return statistics.median(values) if values else float("nan")


def environment():
    """Versions and machine facts recorded next to every result."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
    }
    for module in ("keras", "tensorflow", "jax", "numpy", "sklearn", "tf_keras",
                   "tensorflow_model_optimization", "keras_sparse"):
        mod = sys.modules.get(module)
        if mod is not None:
            info[module] = getattr(mod, "__version__", "?")
    if "keras" in sys.modules:
        info["keras_backend"] = sys.modules["keras"].backend.backend()
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def write_json(name, payload):
    """Write ``payload`` (plus the environment) to ``results/<name>.json``."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, name + ".json")
    data = {"environment": environment(), **payload}
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=_jsonable)
        f.write("\n")
    return path


def _jsonable(value):
    for attr in ("item", "tolist"):
        if hasattr(value, attr):
            return getattr(value, attr)()
    return str(value)


def format_table(header, rows, title=None):
    """A Markdown table (readable as plain text too)."""
    rows = [[str(c) for c in row] for row in rows]
    header = [str(c) for c in header]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"

    lines = [] if title is None else [title, ""]
    lines.append(line(header))
    lines.append("|" + "|".join(
        "-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    lines.extend(line(r) for r in rows)
    return "\n".join(lines)


# ------------------------------------------------------- keras_sparse models
def sparse_layers(model):
    """The sparse layers of ``model`` (nested models included), in layer
    order, found with the public ``ks.layers.is_sparse_layer``."""
    import keras

    import keras_sparse as ks

    found = []
    for layer in model.layers:
        if ks.layers.is_sparse_layer(layer):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(sparse_layers(layer))
    return found


# ------------------------------------------------------------- digits data
def load_digits_split(seed=0):
    """scikit-learn's digits (8x8, 1797 images) scaled to [0, 1], stratified
    75/25 split (1347 train / 450 test): ``(x_train, x_test, y_train,
    y_test)``. The ANCHORS split, as in ``keras-sparse demo``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)


def digits_mlp(hidden=(300, 100)):
    """The ANCHORS digits MLP 64-300-100-10 (logits out), as in
    ``keras-sparse demo``; ``hidden`` sets the hidden widths."""
    import keras

    layers = [keras.Input((64,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers += [keras.layers.Dense(10)]
    return keras.Sequential(layers)


# ------------------------------------------------ overhead benchmark models
#: Batch size of the step-overhead benchmarks (pruning and quantization).
OVERHEAD_BATCH = 128


def overhead_data(kind, steps, seed=0):
    """Synthetic inputs and labels for ``steps`` batches of the ``mlp``
    (784 features) or ``cnn`` (28x28x1) overhead model."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = steps * OVERHEAD_BATCH
    shape = (n, 784) if kind == "mlp" else (n, 28, 28, 1)
    return rng.standard_normal(shape, dtype=np.float32), rng.integers(0, 10, size=(n,))


def overhead_model(kind, k):
    """MLP 784-300-100-10 or CNN conv32-pool-conv64-pool-dense10, built with
    Keras module ``k`` (Keras 3 or tf_keras)."""
    if kind == "mlp":
        layers = [k.Input((784,)), k.layers.Dense(300, activation="relu"),
                  k.layers.Dense(100, activation="relu"), k.layers.Dense(10)]
    else:
        layers = [k.Input((28, 28, 1)), k.layers.Conv2D(32, 3, activation="relu"),
                  k.layers.MaxPooling2D(), k.layers.Conv2D(64, 3, activation="relu"),
                  k.layers.MaxPooling2D(), k.layers.Flatten(), k.layers.Dense(10)]
    return k.Sequential(layers)


# ------------------------------------------------------------------- tfmot
def tfmot_available():
    """Whether tensorflow_model_optimization and tf_keras are installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None
               for m in ("tensorflow_model_optimization", "tf_keras"))


def run_legacy_worker(script, kind, p, marker, log):
    """Run ``script --tfmot-worker kind --plan p`` with
    ``TF_USE_LEGACY_KERAS=1`` (importing tfmot switches tf.keras to Keras 2,
    so it runs in its own process) and return the JSON it prints after
    ``marker`` (``{"error": ...}`` on failure)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, os.path.abspath(script), "--tfmot-worker", kind,
           "--plan", json.dumps(p)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        if line.startswith("  "):
            log(line)
    if proc.returncode != 0:
        log(f"  tfmot worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return {"error": proc.stderr[-3000:]}
    for line in proc.stdout.splitlines():
        if line.startswith(marker):
            return json.loads(line[len(marker):])
    return {"error": "no result line from the tfmot worker:\n" + proc.stdout[-2000:]}


def enable_determinism():
    """Deterministic TensorFlow kernels (same seeds, same numbers)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def digits_fit_val_test():
    """The ANCHORS digits split with 20 % of the training part held out,
    stratified: ``((x_fit, y_fit), (x_val, y_val), (x_test, y_test))``."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = load_digits_split(seed=0)
    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=0.2, stratify=y_train, random_state=1)
    return (x_fit, y_fit), (x_val, y_val), (x_test, y_test)
