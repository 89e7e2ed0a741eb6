"""Pruning under ``tf.distribute.MirroredStrategy`` on two logical CPUs.

Logical devices must be configured before TensorFlow initializes, so the
training runs in a fresh interpreter.
"""

import os
import subprocess
import sys
import textwrap

import keras
import pytest

pytestmark = [pytest.mark.tf_only, pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import keras_sparse as ks
    from keras_sparse.utils import sparse_layers

    TARGET = 0.75
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2

    rng = np.random.RandomState(0)
    x = rng.randn(128, 16).astype("float32")
    y = rng.randint(0, 4, size=128)

    def replicas(variable):
        # A Keras variable wraps the tf.distribute MirroredVariable in `.value`.
        copies = strategy.experimental_local_results(variable.value)
        assert len(copies) == 2, copies
        assert len({c.device for c in copies}) == 2, [c.device for c in copies]
        return [c.numpy() for c in copies]

    class ReplicaChecker(keras.callbacks.Callback):
        # After Pruning: every replica holds the same mask, and right after a
        # mask update the stored weights are zero at pruned positions on
        # every replica.
        updates = 0

        def on_train_batch_begin(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            for layer in sparse_layers(self.model):
                masks = replicas(layer.get_mask("kernel"))
                np.testing.assert_array_equal(masks[0], masks[1])
                if layer.schedule.should_update(step):
                    for latent in replicas(layer.latent_weight("kernel")):
                        assert np.all(latent[~masks[0]] == 0.0), (layer.name, step)
            if sparse_layers(self.model)[0].schedule.should_update(step):
                self.updates += 1

    for optimizer in ("sgd", "adam"):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = keras.Sequential([
                keras.Input((16,)),
                keras.layers.Dense(32, activation="relu", name="d1"),
                keras.layers.Dense(4, name="d2"),
            ])
            model = ks.prune(model, TARGET, schedule=ks.schedules.PolynomialDecay(
                0.0, TARGET, begin_step=0, end_step=6, frequency=2))
            model.compile(
                optimizer=keras.optimizers.SGD(0.1) if optimizer == "sgd"
                else keras.optimizers.Adam(1e-2),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        checker = ReplicaChecker()
        history = model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                            callbacks=[ks.callbacks.Pruning(), checker])
        assert int(model.optimizer.iterations.numpy()) == 8
        assert checker.updates == 4, checker.updates  # steps 0, 2, 4, 6
        assert history.history["sparsity"][-1] == TARGET
        for layer in sparse_layers(model):
            masks = replicas(layer.get_mask("kernel"))
            latents = replicas(layer.latent_weight("kernel"))
            np.testing.assert_array_equal(masks[0], masks[1])
            np.testing.assert_allclose(latents[0], latents[1], rtol=1e-6)
            pruned = ~masks[0]
            assert pruned.sum() == round(TARGET * pruned.size), layer.name
            for latent in latents:
                assert np.all(latent[pruned] == 0.0), (optimizer, layer.name)
            effective = np.asarray(layer.kernel)
            assert np.all(effective[pruned] == 0.0)
        print("OK", optimizer)
""")


def test_mirrored_strategy_two_logical_cpus(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.distribute needs the TensorFlow backend")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env=env, cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "OK sgd" in result.stdout and "OK adam" in result.stdout
