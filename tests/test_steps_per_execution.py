"""``Pruning`` with ``steps_per_execution`` > 1: a call runs several steps,
and the last call of an epoch can run fewer than ``steps_per_execution``
(Keras still reports the full range). Every scheduled update must run once,
inside the call that contains its step. The same holds when the optimizer
skips steps (a loss-scale optimizer on a non-finite gradient does not advance
``iterations``)."""

import keras
import numpy as np

import keras_sparse as ks
from conftest import multi_step_execution

BATCH = 16
PER_CALL = 4


def _step(model):
    return int(np.asarray(keras.ops.convert_to_numpy(model.optimizer.iterations)))


def _fit_recording(epochs, end_step, per_call=PER_CALL, optimizer="adam", scale=1.0):
    rng = np.random.RandomState(0)
    x = (scale * rng.randn(96, 16)).astype("float32")  # 6 steps per epoch
    y = rng.randint(0, 4, size=96)
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="relu"),
                              keras.layers.Dense(4)])
    schedule = ks.schedules.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=end_step, frequency=4)
    model = ks.prune(dense, 0.8, schedule=schedule)
    model.compile(optimizer=optimizer, steps_per_execution=per_call,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = ks.callbacks.Pruning()
    seen = []
    update_layer = callback.update_layer

    def record(layer, step):
        seen.append((layer.name, step, _step(model)))
        update_layer(layer, step)

    callback.update_layer = record
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[callback])
    return model, seen


@multi_step_execution
def test_each_update_step_runs_once_within_its_call():
    model, seen = _fit_recording(epochs=3, end_step=16)
    names = {name for name, _, _ in seen}
    assert len(names) == 2
    for name in names:
        steps = [step for n, step, _ in seen if n == name]
        # 18 steps in calls [0-3] [4-5] | [6-9] [10-11] | [12-15] [16-17]
        assert steps == [0, 4, 8, 12, 16]
    for _, step, iteration in seen:
        assert iteration <= step < iteration + PER_CALL
    for layer in ks.utils.sparse_layers(model):
        mask = np.asarray(keras.ops.convert_to_numpy(layer.get_mask("kernel")))
        assert int((mask == 0).sum()) == round(0.8 * mask.size)


@multi_step_execution
def test_no_update_for_a_step_past_the_last_trained():
    # Step 12 is due; 12 steps are trained: the short call [10-11] must not
    # run it early (it would be step 12's update applied at iteration 10).
    _, seen = _fit_recording(epochs=2, end_step=12)
    assert sorted({step for _, step, _ in seen}) == [0, 4, 8]


def test_skipped_optimizer_steps_do_not_repeat_updates():
    # A loss scale of 2**127 overflows the gradients of these large inputs:
    # the first steps are skipped (scale halved, ``iterations`` unchanged).
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(),
                                                    initial_scale=2.0**127)
    model, seen = _fit_recording(epochs=3, end_step=16, per_call=1, optimizer=optimizer,
                                 scale=1e4)
    assert _step(model) < 18, "the set-up must skip some steps"
    for name in {name for name, _, _ in seen}:
        steps = [step for n, step, _ in seen if n == name]
        # One update per due step of the 18 batches, in order, none repeated.
        assert steps == [0, 4, 8, 12, 16]
    for layer in ks.utils.sparse_layers(model):
        mask = np.asarray(keras.ops.convert_to_numpy(layer.get_mask("kernel")))
        assert int((mask == 0).sum()) == round(0.8 * mask.size)
