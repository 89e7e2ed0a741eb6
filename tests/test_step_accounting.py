"""The step is the number of optimizer updates applied: consistent within a
``fit``, across ``fit`` calls and after ``BackupAndRestore`` (a run killed
with SIGKILL resumes to bit-identical masks), with and without gradient
accumulation."""

import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_sparse as ks
from conftest import to_np
from keras_sparse.utils import sparse_layers

BATCH = 16
TARGET = 0.8


def _data():
    rng = np.random.RandomState(0)
    return rng.randn(96, 16).astype("float32"), rng.randint(0, 4, size=96)


def _model(accumulation):
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="relu"),
                              keras.layers.Dense(4)])
    schedule = ks.schedules.PolynomialDecay(0.0, TARGET, begin_step=0, end_step=10, frequency=2)
    model = ks.prune(dense, TARGET, schedule=schedule)
    model.compile(keras.optimizers.Adam(1e-2, gradient_accumulation_steps=accumulation),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.sparsity = []

    def on_train_batch_end(self, batch, logs=None):
        self.sparsity.append(float(logs["sparsity"]))


def _masks(model):
    return [to_np(layer.get_mask("kernel")).astype(bool) for layer in sparse_layers(model)]


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [None, 2])
def test_second_fit_continues_the_schedule(accumulation):
    x, y = _data()
    # 6 batches per epoch; with accumulation 2, 3 optimizer updates.
    one = _model(accumulation)
    one.fit(x, y, batch_size=BATCH, epochs=6, shuffle=False, verbose=0,
            callbacks=[ks.callbacks.Pruning()])
    two = _model(accumulation)
    record = _Record()
    for _ in range(3):
        two.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
                callbacks=[ks.callbacks.Pruning(), record])
    for a, b in zip(_masks(one), _masks(two)):
        np.testing.assert_array_equal(a, b)
    # Sparsity never goes down, and ends at the target.
    assert all(later >= earlier - 1e-12 for earlier, later in zip(record.sparsity,
                                                                   record.sparsity[1:]))
    assert record.sparsity[-1] == pytest.approx(TARGET, abs=0.01)


@pytest.mark.slow
def test_step_counts_optimizer_updates_with_accumulation():
    x, y = _data()
    model = _model(2)
    callback = ks.callbacks.Pruning()
    seen = []
    update_layer = callback.update_layer

    def record(layer, step):
        seen.append((step, int(to_np(model.optimizer.iterations))))
        update_layer(layer, step)

    callback.update_layer = record
    model.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0, callbacks=[callback])
    steps = sorted({step for step, _ in seen})
    # 24 batches = 12 optimizer updates; the schedule updates at 0, 2, ..., 10.
    assert steps == [0, 2, 4, 6, 8, 10]
    for step, iterations in seen:
        # Keras' iterations counts optimizer updates: run before the first
        # batch of the update.
        assert iterations == step


RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import keras
    import keras_sparse as ks
    from keras_sparse.utils import sparse_layers

    backup, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.RandomState(0)
    x, y = rng.randn(96, 16).astype("float32"), rng.randint(0, 4, size=96)
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="relu"),
                              keras.layers.Dense(4)])
    schedule = ks.schedules.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=10, frequency=2)
    model = ks.prune(dense, 0.8, schedule=schedule)
    model.compile(keras.optimizers.Adam(1e-2, gradient_accumulation_steps=2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Kill(keras.callbacks.Callback):
        seen = 0

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if self.seen == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks = [ks.callbacks.Pruning(), keras.callbacks.BackupAndRestore(backup), Kill()]
    model.fit(x, y, batch_size=16, epochs=6, shuffle=False, verbose=0, callbacks=callbacks)
    np.savez(out, *[np.asarray(keras.ops.convert_to_numpy(l.get_mask("kernel")))
                    for l in sparse_layers(model)],
             *[np.asarray(keras.ops.convert_to_numpy(l.latent_weight("kernel")))
               for l in sparse_layers(model)])
""")


@pytest.mark.slow
@pytest.mark.tf_only  # three fresh interpreters: one backend is enough
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_resume_after_sigkill_gives_identical_masks_with_accumulation(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(backup, out, kill_at):
        return subprocess.run([sys.executable, str(script), str(backup), str(out), str(kill_at)],
                              capture_output=True, text=True, env=env, timeout=600)

    reference = run(tmp_path / "b0", tmp_path / "ref.npz", -1)
    assert reference.returncode == 0, reference.stderr[-3000:]
    # Killed in the middle of epoch 3 (after batch 15 of 36, an odd
    # accumulation phase), then resumed from the epoch-2 backup.
    killed = run(tmp_path / "b1", tmp_path / "unused.npz", 15)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run(tmp_path / "b1", tmp_path / "resumed.npz", -1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref, res = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "resumed.npz")
    assert len(ref.files) == 4
    for key in ref.files:
        np.testing.assert_array_equal(ref[key], res[key], err_msg=key)


# --------------------------------------------------------------- target checks
def _gmp_model(end_step):
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="relu",
                                                                     name="hidden"),
                              keras.layers.Dense(4, name="out")])
    schedule = ks.schedules.PolynomialDecay(0.0, TARGET, begin_step=0, end_step=end_step,
                                            frequency=2)
    model = ks.prune(dense, TARGET, schedule=schedule)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.slow
def test_unreachable_schedule_warns_at_begin_and_end():
    x, y = _data()
    # tfmot's recipe: end_step = steps_per_epoch * epochs = 12, but the last
    # step of the run is 11.
    model = _gmp_model(end_step=12)
    with pytest.warns(UserWarning) as caught:
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
                  callbacks=[ks.callbacks.Pruning()])
    messages = [str(w.message) for w in caught]
    begin = [m for m in messages if "will not reach" in m]
    end = [m for m in messages if "ended below the target" in m]
    assert len(begin) == 1 and "'hidden' (end_step=12, planned last step=11" in begin[0]
    assert len(end) == 1 and "'hidden' kernel at 0.797 (target 0.800)" in end[0]


@pytest.mark.slow
def test_reachable_schedule_does_not_warn(recwarn):
    x, y = _data()
    model = _gmp_model(end_step=11)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[ks.callbacks.Pruning()])
    assert not [w for w in recwarn if "sparsity" in str(w.message)]
    for layer in sparse_layers(model):
        assert layer.sparsity == pytest.approx(TARGET, abs=0.01)
