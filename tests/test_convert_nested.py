"""``ks.prune`` on Sequential/functional models holding layers it cannot
reach: sublayers of a subclassed model or of a layer such as
``MultiHeadAttention`` are recreated by ``clone_model``, so they are
reported, never counted as converted."""

import warnings

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse.utils import sparse_layers


class _Block(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(8, name="inner")

    def call(self, x):
        return self.inner(x)


def _with_subclassed_block():
    block = _Block(name="block")
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(3, name="head")(block(inputs))
    return keras.Model(inputs, outputs)


def _with_attention():
    inputs = keras.Input((5, 8))
    h = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    outputs = keras.layers.Dense(3, name="head")(h)
    return keras.Model(inputs, outputs)


def _prune_recording(model, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = ks.prune(model, 0.5, **kwargs)
    messages = [str(w.message) for w in caught if "keras_sparse" in str(w.message)]
    return pruned, messages


def test_layer_inside_a_nested_subclassed_model_is_reported():
    model = _with_subclassed_block()
    pruned, messages = _prune_recording(model)
    assert [layer.name for layer in sparse_layers(pruned)] == ["head"]
    assert len(messages) == 1 and "block (_Block)" in messages[0]
    x = np.random.RandomState(0).randn(4, 8).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)), keras.ops.convert_to_numpy(pruned(x)), atol=1e-6
    )


def test_selecting_a_layer_inside_a_nested_subclassed_model_is_not_silent():
    model = _with_subclassed_block()
    pruned, messages = _prune_recording(model, layers="inner")
    assert sparse_layers(pruned) == []
    assert len(messages) == 1 and "block (_Block)" in messages[0]
    with pytest.raises(ValueError, match="block"):
        ks.prune(model, 0.5, layers="inner", strict=True)


def test_sublayers_of_an_unsupported_layer_do_not_share_the_budget():
    # Only "head" becomes sparse, so it alone carries the target.
    pruned, messages = _prune_recording(_with_attention(), distribution="erk")
    layers = sparse_layers(pruned)
    assert [layer.name for layer in layers] == ["head"]
    assert layers[0].schedule.target_sparsity == pytest.approx(0.5)
    assert len(messages) == 1 and "mha (MultiHeadAttention)" in messages[0]


def test_quantize_reports_a_layer_it_cannot_reach_the_same_way():
    model = _with_subclassed_block()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = ks.quantize(model, "ste_sign", layers="inner")
    messages = [str(w.message) for w in caught if "cannot quantize" in str(w.message)]
    assert len(messages) == 1 and "block (_Block)" in messages[0]
    assert not any(isinstance(layer, ks.layers.SparseDense) for layer in quantized.layers)
    with pytest.raises(ValueError, match="block"):
        ks.quantize(model, "ste_sign", layers="inner", strict=True)
