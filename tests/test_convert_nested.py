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


# ------------------- a subclassed block made sparse in place, then enclosed
def _x():
    return np.random.RandomState(1).randn(6, 8).astype("float32")


def _np(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def _enclosing_a_pruned_block(quantize=False):
    keras.utils.set_random_seed(0)
    block = _Block(name="block")
    block(_x())
    block = ks.prune(block, 0.5, schedule=ks.schedules.OneShot(0))
    if quantize:
        block = ks.quantize(block, "ste_sign")
    inner = block.inner
    # A mask no fresh pruning would draw: it survives only if copied.
    inner.set_mask("kernel", (np.arange(64).reshape(8, 8) % 2).astype("float32"))
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(3, name="head")(block(inputs))
    return keras.Model(inputs, outputs), inner


def _inner_of(model):
    return model.get_layer("block").inner


def test_strip_an_enclosing_model_of_a_block_pruned_in_place():
    model, inner = _enclosing_a_pruned_block()
    expected = _np(model(_x()))
    plain = ks.strip(model)
    stripped = _inner_of(plain)
    assert type(stripped) is keras.layers.Dense
    np.testing.assert_array_equal(_np(stripped.kernel),
                                  _np(inner.masked_latent("kernel")))
    np.testing.assert_allclose(_np(plain(_x())), expected, rtol=1e-6, atol=1e-6)
    # The input model is untouched.
    assert isinstance(_inner_of(model), ks.layers.SparseDense)


def test_prune_an_enclosing_model_keeps_the_block_sparse_with_its_masks():
    model, inner = _enclosing_a_pruned_block()
    expected = _np(model(_x()))
    pruned, messages = _prune_recording(model)
    assert len(messages) == 1 and "block (_Block)" in messages[0]
    copied = _inner_of(pruned)
    assert isinstance(copied, ks.layers.SparseDense) and copied is not inner
    np.testing.assert_array_equal(_np(copied.get_mask("kernel")), _np(inner.get_mask("kernel")))
    np.testing.assert_array_equal(_np(copied.latent_weight("kernel")),
                                  _np(inner.latent_weight("kernel")))
    assert copied.schedule == inner.schedule and copied.pattern == inner.pattern
    assert [layer.name for layer in sparse_layers(pruned)] == ["inner", "head"]
    # Head is dense until the Pruning callback's first update.
    np.testing.assert_allclose(_np(pruned(_x())), expected, rtol=1e-6, atol=1e-6)


def test_quantize_an_enclosing_model_keeps_the_block_quantizer():
    model, inner = _enclosing_a_pruned_block(quantize=True)
    expected = _np(model(_x()))
    quantized = ks.quantize(model, "ste_sign", layers="head")
    copied = _inner_of(quantized)
    assert copied.kernel_quantizer == inner.kernel_quantizer
    np.testing.assert_array_equal(_np(copied.get_mask("kernel")), _np(inner.get_mask("kernel")))
    head = quantized.get_layer("head")
    assert head.kernel_quantizer is not None
    np.testing.assert_allclose(_np(copied(_x())), _np(inner(_x())), rtol=1e-6, atol=1e-6)
    assert _np(quantized(_x())).shape == expected.shape


class _Deep(keras.Model):
    """Its config does not record ``depth``: ``from_config`` rebuilds one layer."""

    def __init__(self, depth=1, **kwargs):
        super().__init__(**kwargs)
        self.stack = [keras.layers.Dense(8) for _ in range(depth)]

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def test_a_block_that_rebuilds_different_sublayers_is_a_clear_error():
    block = _Deep(depth=2, name="deep")
    block(_x())
    block = ks.prune(block, 0.5)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, block(inputs))
    with pytest.raises(ValueError, match="deep"):
        ks.strip(model)
