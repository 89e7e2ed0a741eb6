"""``ks.calibrate``: input-quantizer state from real inputs (LSQ's step)."""

import math

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse.utils import sparse_layers


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(16, activation="relu", name="a"),
        keras.layers.Dense(8, activation="relu", name="b"),
        keras.layers.Dense(3, name="c"),
    ])


def _lsq_model(bits=4):
    return ks.quantize(_model(), bits, activations=ks.quantizers.LSQ(bits, signed=False),
                       skip_first=True)


def _step(layer):
    return float(keras.ops.convert_to_numpy(layer.quantizer_state("input")["step"]))


def _data(n=40):
    return np.random.RandomState(3).rand(n, 12).astype("float32") * 4.0


def test_lsq_step_follows_the_rule_on_each_layers_actual_inputs():
    model = _lsq_model(bits=4)
    x = _data()
    quantized = [layer for layer in sparse_layers(model) if layer.input_quantizer is not None]
    assert [layer.name for layer in quantized] == ["b", "c"]
    assert all(_step(layer) == 1.0 for layer in quantized)
    # The inputs of "b" are the outputs of "a" (not quantized), computed in
    # numpy from the weights; those of "c" go through b's quantizer, so
    # they are recorded from a sub-model after "b" is calibrated.
    kernel_a, bias_a = model.get_layer("a").get_weights()
    inputs_b = np.maximum(x @ kernel_a + bias_a, 0.0)
    changed = ks.calibrate(model, x, batch_size=16, batches=3)
    assert changed == ["b", "c"]
    q_p = 2**4 - 1
    assert _step(quantized[0]) == pytest.approx(2 * np.abs(inputs_b).mean() / math.sqrt(q_p),
                                                rel=1e-5)
    inputs_c = keras.ops.convert_to_numpy(
        keras.Model(model.inputs, model.layers[1].output)(x, training=False))
    assert _step(quantized[1]) == pytest.approx(2 * np.abs(inputs_c).mean() / math.sqrt(q_p),
                                                rel=1e-5)


def test_only_the_requested_batches_are_used():
    x = _data(64)
    one = _lsq_model()
    ks.calibrate(one, x, batches=1, batch_size=16)
    again = _lsq_model()
    ks.calibrate(again, x[:16], batches=5, batch_size=16)
    assert _step(sparse_layers(one)[0]) == _step(sparse_layers(again)[0])
    full = _lsq_model()
    ks.calibrate(full, x, batches=4, batch_size=16)
    assert _step(sparse_layers(full)[0]) != _step(sparse_layers(one)[0])


def test_iterable_of_batches_and_xy_tuple_give_the_same_step():
    x = _data(32)
    y = np.zeros((32,), "int32")
    from_tuple = _lsq_model()
    ks.calibrate(from_tuple, (x, y), batches=2, batch_size=16)
    from_batches = _lsq_model()
    ks.calibrate(from_batches, [(x[:16], y[:16]), (x[16:], y[16:]), (x, y)], batches=2)
    assert _step(sparse_layers(from_tuple)[1]) == pytest.approx(
        _step(sparse_layers(from_batches)[1]), rel=1e-6)


def test_quantizers_without_state_are_left_alone_and_outputs_unchanged():
    model = ks.quantize(_model(), 8, activations=8, skip_first=True)
    x = _data(16)
    before = keras.ops.convert_to_numpy(model(x))
    assert ks.calibrate(model, x) == []
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), before)
    assert all("_calibration_inputs" not in layer.__dict__ for layer in sparse_layers(model))


@pytest.mark.slow
def test_calibrated_model_trains_and_keeps_its_step_through_a_round_trip(tmp_path):
    model = _lsq_model()
    x = _data(64)
    ks.calibrate(model, x)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.arange(64) % 3, epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(sparse_layers(model), sparse_layers(loaded)):
        assert _step(a) == _step(b)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(batches=0), "batches"),
    (dict(batches=True), "batches"),
    (dict(data={"x": 1}), "data"),
    (dict(data=[]), "no batch"),
    (dict(data=np.zeros((0, 12), "float32")), "at least one example"),
])
def test_bad_arguments_raise_and_leave_the_model_untouched(bad, match):
    model = _lsq_model()
    args = {"data": _data(8), **bad}
    data = args.pop("data")
    with pytest.raises(ValueError, match=match):
        ks.calibrate(model, data, **args)
    assert all(_step(layer) == 1.0 for layer in sparse_layers(model))
