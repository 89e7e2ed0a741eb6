"""SET / RigL in ``model.fit`` at the edges of the training loop: calls of
several steps, masks fixed by ``ks.prune_at_init``, and a second ``fit`` on
layers sharing one global budget."""

import keras
import numpy as np
import pytest

import keras_sparse as ks
from conftest import multi_step_execution
from keras_sparse.utils import sparse_layers
# The set-up of the main SET / RigL tests (6 steps per epoch).
from test_rigl_set import BATCH
from test_rigl_set import _data
from test_rigl_set import _mask
from test_rigl_set import _model
from test_rigl_set import _step


@pytest.mark.slow
@multi_step_execution
def test_steps_per_execution_updates_each_step_once_never_early():
    # 6 steps per epoch in calls of 4: the last call of each epoch runs 2.
    x, y = _data()
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=4,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    set_cb = ks.callbacks.SET(update_freq=4, end_step=40, seed=0)
    seen = []
    update_layer = set_cb.update_layer

    def record(layer, step):
        seen.append((step, _step(model)))
        update_layer(layer, step)

    set_cb.update_layer = record
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[set_cb])
    steps = [step for step, _ in seen[::2]]  # two layers per update
    assert steps == [4, 8, 12, 16]  # step 20 was never reached (18 steps)
    assert all(iteration >= step for step, iteration in seen)


@pytest.mark.slow
def test_rigl_moves_masks_fixed_by_prune_at_init():
    x, y = _data()
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="relu"),
                              keras.layers.Dense(4)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = ks.prune_at_init(dense, (x[:32], y[:32]), 0.7, scorer="snip", loss=loss)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    start = [_mask(layer) for layer in sparse_layers(model)]
    rigl = ks.callbacks.RigL(update_freq=2, end_step=14, seed=0)
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[rigl])
    for layer, mask in zip(sparse_layers(model), start):
        assert layer.schedule is None
        assert _mask(layer).sum() == mask.sum()  # the SNIP sparsity is kept
        assert not np.array_equal(_mask(layer), mask), layer.name


class _MasksAtTrainBegin(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.masks = [_mask(layer) for layer in sparse_layers(self.model)]


@pytest.mark.slow
@pytest.mark.parametrize("cls", [ks.callbacks.SET, ks.callbacks.RigL])
def test_second_fit_keeps_global_budget_masks(cls):
    # The last step of the first fit is an update: regrown weights are still
    # exactly 0 when the second fit starts, and its start must not re-prune.
    x, y = _data()
    model = _model(sparsity=0.8, distribution="global")
    first = cls(update_freq=6, end_step=100, seed=0)
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[first])
    layers = sparse_layers(model)
    masks = [_mask(layer) for layer in layers]
    sizes = sum(mask.size for mask in masks)
    assert abs(sum(int((~m).sum()) for m in masks) - 0.8 * sizes) <= len(masks)
    assert any(m.mean() != masks[0].mean() for m in masks[1:])  # per-layer densities differ
    probe = _MasksAtTrainBegin()
    second = cls(update_freq=6, end_step=100, seed=1)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[second, probe])
    for before, at_start in zip(masks, probe.masks):
        np.testing.assert_array_equal(at_start, before)
