"""Every method under ``tf.distribute.MirroredStrategy`` (two logical CPUs)
with ``fit`` called outside the strategy scope, the usual pattern: the model
is built, converted and compiled inside the scope, and nothing is created or
rebuilt during ``fit``.

Logical devices must be configured before TensorFlow initializes, so the
training runs in a fresh interpreter.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.tf_only, pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import keras_sparse as ks
    from keras_sparse.utils import sparse_layers

    KIND = sys.argv[1]
    TARGET = 0.75
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.RandomState(0)
    x = rng.randn(256, 16).astype("float32")
    y = rng.randint(0, 4, size=256)

    def replicas(variable):
        copies = strategy.experimental_local_results(variable.value)
        assert len(copies) == 2, copies
        return [c.numpy() for c in copies]

    keras.utils.set_random_seed(0)
    with strategy.scope():
        dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dense(4)])
        schedule = ks.schedules.PolynomialDecay(0.0, TARGET, begin_step=2, end_step=12,
                                                frequency=2)
        if KIND in ("gmp", "taylor", "movement"):
            scorer = "magnitude" if KIND == "gmp" else KIND
            model = ks.prune(dense, TARGET, schedule=schedule, scorer=scorer)
        else:
            method = {"set": ks.methods.SET, "rigl": ks.methods.RigL}[KIND](
                update_freq=2, end_step=14, seed=0)
            model = ks.prune(dense, TARGET, method=method)
        model.compile(keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    optimizer = model.optimizer
    start = [replicas(layer.get_mask("kernel"))[0].copy() for layer in sparse_layers(model)]

    class ReplicaChecker(keras.callbacks.Callback):
        checked = 0

        def on_train_batch_end(self, batch, logs=None):
            for layer in sparse_layers(self.model):
                masks = replicas(layer.get_mask("kernel"))
                np.testing.assert_array_equal(masks[0], masks[1])
                for latent in replicas(layer.latent_weight("kernel")):
                    assert np.all(latent[~masks[0]] == 0.0) or KIND in ("gmp", "taylor",
                                                                         "movement")
            self.checked += 1

    checker = ReplicaChecker()
    # fit outside strategy.scope()
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False,
              callbacks=[ks.callbacks.Sparsity(), checker])
    assert model.optimizer is optimizer, "the optimizer was rebuilt during fit"
    assert checker.checked == 16
    moved = False
    for layer, before in zip(sparse_layers(model), start):
        masks = replicas(layer.get_mask("kernel"))
        np.testing.assert_array_equal(masks[0], masks[1])
        assert int((~masks[0]).sum()) == round(TARGET * masks[0].size), layer.name
        moved = moved or not np.array_equal(before, masks[0])
    assert moved
    print("OK", KIND)
""")


@pytest.mark.parametrize("kind", ["gmp", "set", "rigl", "taylor", "movement"])
def test_method_trains_under_mirrored_strategy_with_fit_outside_scope(tmp_path, kind):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, str(script), kind], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"OK {kind}" in result.stdout
