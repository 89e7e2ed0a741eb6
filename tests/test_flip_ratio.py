import json

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import keras_sparse as ks
from conftest import to_np
from keras_sparse.metrics import FlipRatio
from keras_sparse.metrics import flip_ratio
from keras_sparse.metrics import signs
from keras_sparse.optimizers import Bop
from keras_sparse.optimizers import CaseOptimizer
from keras_sparse.optimizers import PathMatches


def test_flip_ratio_counts_by_hand_with_sign_of_zero_positive():
    before = np.array([1.0, -1.0, 0.0, 0.0, -0.5, 2.0], "float32")
    after = np.array([-1.0, -2.0, -0.1, 0.3, 0.0, 2.0], "float32")
    # flips: 1 -> -1 yes; -1 -> -2 no; 0 (+) -> -0.1 yes; 0 -> 0.3 no;
    # -0.5 -> 0 (+) yes; 2 -> 2 no.
    assert flip_ratio(before, after) == (3, 6)
    mask = np.array([True, True, False, True, True, False])
    assert flip_ratio(before, after, mask) == (2, 4)
    assert flip_ratio(before, after, np.zeros(6, bool)) == (0, 0)
    np.testing.assert_array_equal(signs(before), [True, False, True, True, False, True])
    # Precomputed sign patterns are accepted as they are.
    assert flip_ratio(signs(before), signs(after)) == (3, 6)


@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=6),
                  elements=st.floats(-10, 10, width=32)),
       st.integers(0, 2**31 - 1))
def test_flip_ratio_invariants(w, seed):
    rng = np.random.default_rng(seed)
    flipped_w = np.where(w >= 0, -1.0, 1.0).astype("float32")
    assert flip_ratio(w, w) == (0, w.size)
    assert flip_ratio(w, flipped_w) == (w.size, w.size)
    other = rng.normal(size=w.shape).astype("float32")
    mask = rng.random(w.shape) < 0.5
    f, c = flip_ratio(w, other, mask)
    assert (f, c) == flip_ratio(other, w, mask)  # symmetric
    assert 0 <= f <= c == int(mask.sum())


def test_flip_ratio_shape_errors():
    with pytest.raises(ValueError, match="before.shape"):
        flip_ratio(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="mask.shape"):
        flip_ratio(np.ones(3), np.ones(3), np.ones(4, bool))


def test_flip_ratio_callback_arguments_and_config():
    with pytest.raises(ValueError, match="update_freq='step'"):
        FlipRatio(update_freq="step")
    with pytest.raises(ValueError, match="log_per_layer=1"):
        FlipRatio(log_per_layer=1)
    with pytest.raises(ValueError, match="predicate='ternary'"):
        FlipRatio(predicate="ternary")
    callback = FlipRatio(update_freq="batch", log_per_layer=False,
                         predicate=PathMatches("kernel"))
    config = json.loads(json.dumps(callback.get_config()))
    restored = FlipRatio(**{**config, "predicate": keras.saving.deserialize_keras_object(
        config["predicate"])})
    assert restored.update_freq == "batch" and restored.log_per_layer is False
    assert restored.predicate == PathMatches("kernel")
    assert ks.metrics.FlipRatio is FlipRatio


def _model(prune=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8,)),
        ks.layers.SparseDense(16, kernel_quantizer="ste_sign", name="binary_dense",
                              masked=prune is not None),
        # A 4-bit layer trained by Adam: its sign changes are not watched.
        ks.layers.SparseDense(3, kernel_quantizer=4, name="head"),
    ])
    layer = model.get_layer("binary_dense")
    if prune is not None:
        layer.prune_to(prune)
    model.compile(
        optimizer=CaseOptimizer(
            (ks.optimizers.binary_kernels(model), Bop(threshold=1e-5, gamma=0.1)),
            default=keras.optimizers.Adam(1e-2)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 3, size=(64,))


class _Snapshots(keras.callbacks.Callback):
    """Kernel values at the start of each epoch and after each batch."""

    def __init__(self):
        super().__init__()
        self.epoch_start, self.after_batch = [], []

    def _kernel(self):
        ks.backend.sync_model_state(self.model)
        return to_np(self.model.get_layer("binary_dense").latent_weight("kernel")).copy()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start.append(self._kernel())

    def on_train_batch_end(self, batch, logs=None):
        self.after_batch.append(self._kernel())


@pytest.mark.slow
@pytest.mark.parametrize("prune", [None, 0.5])
def test_flip_ratio_logs_equal_sign_changes_over_each_epoch(prune):
    model = _model(prune)
    x, y = _data()
    snapshots, callback = _Snapshots(), FlipRatio()
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0,
                        callbacks=[snapshots, callback])
    layer = model.get_layer("binary_dense")
    assert layer.has_masks == (prune is not None)
    # Without masks (only quantized) every weight is counted.
    mask = to_np(layer.get_mask("kernel")) if layer.has_masks else True
    ends = snapshots.epoch_start[1:] + [
        to_np(model.get_layer("binary_dense").latent_weight("kernel"))]
    expected = []
    for start, end in zip(snapshots.epoch_start, ends):
        flipped = (start >= 0) != (end >= 0)
        expected.append(np.count_nonzero(flipped & mask) / np.count_nonzero(mask & np.ones_like(flipped)))
    np.testing.assert_allclose(history.history["flip_ratio"], expected)
    np.testing.assert_allclose(history.history["binary_dense/flip_ratio"], expected)
    assert any(r > 0 for r in expected)
    assert [h["flip_ratio"] for h in callback.history] == history.history["flip_ratio"]
    assert "head/flip_ratio" not in history.history
    # The forward pass saw exactly the signs that were counted.
    effective = to_np(model.get_layer("binary_dense").kernel)
    np.testing.assert_array_equal(effective, np.where(ends[-1] >= 0, 1.0, -1.0) * mask)


@pytest.mark.slow
def test_flip_ratio_per_batch():
    model = _model()
    x, y = _data()
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(logs["flip_ratio"])

    snapshots = _Snapshots()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0,
              callbacks=[snapshots, FlipRatio(update_freq="batch"), Record()])
    states = snapshots.epoch_start[:1] + snapshots.after_batch
    expected = [np.mean((a >= 0) != (b >= 0)) for a, b in zip(states, states[1:])]
    np.testing.assert_allclose(seen, expected)
    assert len(seen) == 4


@pytest.mark.slow
def test_flip_ratio_without_binary_weights_warns_and_logs_nothing():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 4), "float32")
    with pytest.warns(UserWarning, match="no trainable binary weight"):
        history = model.fit(x, np.ones((8, 2), "float32"), epochs=1, verbose=0,
                            callbacks=[FlipRatio()])
    assert "flip_ratio" not in history.history


@pytest.mark.slow
def test_flip_ratio_watches_marked_variables_and_predicates():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="plain"),
                              keras.layers.Dense(2, name="other")])
    model.get_layer("plain").kernel.precision = 1
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    watched = FlipRatio().watched(model)
    assert [label for label, _, _ in watched] == ["plain"]
    assert [v for _, v, _ in watched] == [model.get_layer("plain").kernel]
    assert [mask for _, _, mask in watched] == [None]
    by_path = FlipRatio(predicate=PathMatches("other/")).watched(model)
    assert [v for _, v, _ in by_path] == [model.get_layer("other").kernel,
                                          model.get_layer("other").bias]
    assert {label for label, _, _ in by_path} == {"other"}
