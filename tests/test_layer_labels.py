"""Per-layer labels in logs stay distinct when layers of nested models share
a name (two blocks built by one function): the values of one layer are never
written over, or merged with, another's."""

import keras
import numpy as np

import keras_sparse as ks
from keras_sparse.metrics import FlipRatio
from keras_sparse.utils import layer_labels


def _block(name):
    inputs = keras.Input((8,))
    return keras.Model(inputs, keras.layers.Dense(8, name="proj")(inputs), name=name)


def _nested():
    inputs = keras.Input((8,))
    hidden = _block("enc_b")(_block("enc_a")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(hidden))


class _Twins(keras.Model):
    """Two sub-models with one name, each with a layer of one name."""

    def __init__(self):
        super().__init__()
        self.first = _block("twin")
        self.second = _block("twin")

    def call(self, x):
        return self.second(self.first(x))


def test_labels_are_names_unless_they_collide():
    model = _nested()
    layers = ks.utils.walk_layers(model)
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    assert layer_labels(model, dense) == ["enc_a/proj", "enc_b/proj", "head"]
    # Only the layers asked about count: one "proj" alone keeps its name.
    assert layer_labels(model, dense[1:]) == ["proj", "head"]


def test_identical_paths_get_a_counter():
    model = _Twins()
    model(np.zeros((1, 8), "float32"))
    dense = [layer for layer in ks.utils.walk_layers(model)
             if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 2
    assert layer_labels(model, dense) == ["twin/proj", "twin/proj#2"]


def test_pruning_logs_every_layer_of_same_named_blocks():
    rng = np.random.RandomState(0)
    x, y = rng.randn(64, 8).astype("float32"), rng.randn(64, 3).astype("float32")
    model = ks.prune(_nested(), 0.5, schedule=ks.schedules.OneShot(0))
    # Different sparsities per block, so overwritten values would show.
    ks.utils.sparse_layers(model)[0].schedule = ks.schedules.OneShot(0, target_sparsity=0.25)
    model.compile("adam", "mse")
    history = model.fit(x, y, epochs=1, batch_size=32, verbose=0,
                        callbacks=[ks.callbacks.Pruning()])
    logs = {key: value[-1] for key, value in history.history.items()}
    assert {"enc_a/proj/sparsity", "enc_b/proj/sparsity", "head/sparsity"} <= set(logs)
    assert logs["enc_a/proj/sparsity"] == 0.25
    assert logs["enc_b/proj/sparsity"] == 0.5


def test_rigl_reports_each_same_named_layer():
    rng = np.random.RandomState(0)
    x, y = rng.randn(64, 8).astype("float32"), rng.randn(64, 3).astype("float32")
    model = ks.prune(_nested(), 0.5)
    model.compile("adam", "mse")
    callback = ks.callbacks.RigL(update_freq=2, drop_fraction=0.5, end_step=4, seed=0)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[callback])
    assert set(callback.last_update) == {"enc_a/proj", "enc_b/proj", "head"}


def test_flip_ratio_keeps_same_named_plain_layers_apart():
    model = _nested()
    watched = FlipRatio(predicate=lambda v: v.path.endswith("kernel")).watched(model)
    labels = sorted(label for label, _, _ in watched)
    assert labels == ["enc_a/proj", "enc_b/proj", "head"]
