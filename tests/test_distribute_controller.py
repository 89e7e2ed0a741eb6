"""The Proximal optimizer and SparsityController under
``tf.distribute.MirroredStrategy`` on two logical CPUs (in a fresh
interpreter: logical devices must be set before TensorFlow initializes)."""

import os
import subprocess
import sys
import textwrap

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

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.RandomState(0)
    x = rng.randn(256, 16).astype("float32")
    y = rng.randint(0, 4, size=256)
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(4, name="out")])
        optimizer = ks.optimizers.Proximal(
            "adam", "l1", variables=ks.optimizers.kernels(model, exclude="out"))
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # fit outside the scope, the usual pattern
    model.fit(x, y, epochs=6, batch_size=32, verbose=0,
              callbacks=[ks.callbacks.SparsityController(0.7)])
    for variable in (model.layers[0].kernel, optimizer.coefficient):
        copies = [t.numpy() for t in strategy.experimental_local_results(variable.value)]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
    kernel = model.layers[0].kernel.numpy()
    assert int((kernel == 0).sum()) == int(np.ceil(0.7 * kernel.size)), (kernel == 0).mean()
    print("OK")
""")


def test_controller_under_mirrored_strategy(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env=env, cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
