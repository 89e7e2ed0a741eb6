"""Variables added to built layers (gradient probes, the masks and quantizer
state of a model converted in place) take part in training like the others.

On torch a built model keeps its own dict of parameters, which
``zero_grad()`` clears before each step; a variable added later to one of
its layers must be registered there too, or its gradient adds up across
steps. These tests run on every backend.
"""

import keras
import numpy as np

import keras_sparse as ks
from conftest import to_np
from keras_sparse import quantizers
from keras_sparse.utils import sparse_layers

FEATURES, UNITS, BATCH, BATCHES = 5, 3, 8, 4


def _linear_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH * BATCHES, FEATURES)).astype("float32")
    y = rng.standard_normal((BATCH * BATCHES, UNITS)).astype("float32")
    return x, y


class _RecordProbe(keras.callbacks.Callback):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.probes = []

    def on_train_batch_end(self, batch, logs=None):
        ks.backend.sync_model_state(self.model)
        self.probes.append(to_np(self.layer.last_gradient("kernel")).copy())


def test_gradient_probe_holds_each_steps_gradient_not_a_running_sum():
    # SGD with a zero learning rate: the weights never move, so the dense
    # gradient of each batch has a closed form. RigL adds the probes when
    # training begins (after the model was built) and updates far later.
    keras.utils.set_random_seed(0)
    model = ks.prune(
        keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(UNITS, name="d")]), 0.5
    )
    model.compile(keras.optimizers.SGD(0.0), "mse")
    layer = sparse_layers(model)[0]
    record = _RecordProbe(layer)
    x, y = _linear_data()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[ks.callbacks.RigL(update_freq=1000, end_step=2000), record])
    kernel, bias = to_np(layer.effective_weight("kernel")), to_np(layer.bias)
    assert len(record.probes) == 2 * BATCHES
    for step, probe in enumerate(record.probes):
        xb = x[(step % BATCHES) * BATCH:][:BATCH]
        yb = y[(step % BATCHES) * BATCH:][:BATCH]
        residual = xb @ kernel + bias - yb
        expected = xb.T @ (2.0 * residual / residual.size)
        np.testing.assert_allclose(probe, expected, rtol=1e-4, atol=1e-6,
                                   err_msg=f"step {step + 1}")


class TwoLayerNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(6, activation="relu", name="hidden")
        self.out = keras.layers.Dense(UNITS, name="out")

    def call(self, x):
        return self.out(self.hidden(x))


def _parameter_ids(model):
    """Ids of the backend tensors training updates: on torch the model's
    registered parameters, elsewhere every variable."""
    if keras.backend.backend() == "torch":
        return {id(p) for p in model.parameters()}
    return {id(v.value) for v in model.variables}


def test_in_place_conversion_registers_new_variables_with_the_model():
    model = TwoLayerNet()
    model(np.zeros((1, FEATURES), "float32"))  # built: its parameters are tracked
    ks.prune(model, 0.5)  # in place: adds masks
    ks.quantize(model, quantizers.LSQ(bits=4))  # in place: adds LSQ steps
    added = [v for layer in sparse_layers(model) for v in layer.auxiliary_variables()]
    assert any(v.trainable for v in added) and any(not v.trainable for v in added)
    registered = _parameter_ids(model)
    for variable in model.variables:
        assert id(variable.value) in registered, variable.path


def test_in_place_trained_step_size_matches_a_model_quantized_before_building():
    # Quantizing a built model in place trains exactly like quantizing it
    # before it was built: same kernels, biases and LSQ steps after 8 steps.
    x, y = _linear_data()
    histories = []
    for built_first in (True, False):
        keras.utils.set_random_seed(3)
        model = TwoLayerNet()
        if built_first:
            model(x[:1])
            ks.quantize(model, quantizers.LSQ(bits=4))
        else:
            ks.quantize(model, quantizers.LSQ(bits=4))
            model(x[:1])
        model.compile(keras.optimizers.SGD(0.01), "mse")
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        histories.append([to_np(v) for v in model.trainable_variables])
    for in_place, fresh in zip(*histories):
        np.testing.assert_allclose(in_place, fresh, rtol=1e-5, atol=1e-6)
