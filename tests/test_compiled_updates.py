"""Compiled mask updates: the traced top-k gives the eager masks bit for bit,
one trace serves every sparsity of a schedule, and a fit with compiled
updates ends with the masks of a fit without them."""

import keras
import numpy as np
import pytest
from conftest import backend_name, to_np

import keras_sparse as ks
from keras_sparse import backend
from keras_sparse.ops import compiled as compiled_ops
from keras_sparse.ops import masks as mask_ops
from keras_sparse.utils import sparse_layers

SPARSITIES = (0.0, 0.1, 0.37, 0.5, 0.9, 0.99)


def _score_sets(rng, shape):
    dense = rng.standard_normal(shape).astype(np.float32)
    ties = np.round(dense, 1)  # many ties, -0.0 and 0.0 among them
    pruned = np.abs(dense) * (rng.random(shape) > 0.6)  # exact zeros
    zeros = np.zeros(shape, np.float32)
    zeros.flat[::3] = -0.0
    nonfinite = dense.copy()
    flat = nonfinite.reshape(-1)
    picks = rng.permutation(flat.size)
    third = max(1, flat.size // 3)
    flat[picks[:third // 3 + 1]] = np.nan
    flat[picks[third // 3 + 1: 2 * (third // 3) + 1]] = np.inf
    flat[picks[2 * (third // 3) + 1: third]] = -np.inf
    return {"dense": dense, "ties": ties, "pruned": pruned, "zeros": zeros,
            "nonfinite": nonfinite, "all_nan": np.full(shape, np.nan, np.float32)}


def _traced(function, monkeypatch):
    """``function`` compiled where the backend compiles updates (the switch
    is turned on: updates run on the host by default)."""
    monkeypatch.setattr(backend, "COMPILED_UPDATES", True)
    compiled = backend.compile_update(function)
    return function if compiled is None else compiled


@pytest.mark.parametrize("shape", [(7,), (40, 30), (3, 3, 8, 16), (300, 500)])
def test_dynamic_topk_equals_eager(rng, shape, monkeypatch):
    traced = _traced(lambda scores, keep: compiled_ops.topk_mask_dynamic(scores, keep[0]),
                     monkeypatch)
    n = int(np.prod(shape))
    for label, scores in _score_sets(rng, shape).items():
        for sparsity in SPARSITIES:
            keep = np.array([compiled_ops.keep_count(sparsity, n)], np.int32)
            expected = to_np(mask_ops.topk_mask(scores, sparsity))
            got = to_np(traced(scores, keep))
            assert np.array_equal(got, expected), (label, sparsity)
            assert got.sum() == max(1, n - round(sparsity * n))
            empty = np.array([compiled_ops.keep_count(sparsity, n, 0)], np.int32)
            expected = to_np(mask_ops.topk_mask(scores, sparsity, allow_empty=True))
            assert np.array_equal(to_np(traced(scores, empty)), expected), (label, sparsity)


def test_dynamic_global_topk_equals_eager(rng, monkeypatch):
    shapes = [(20, 10), (3, 3, 2, 4), (50,)]
    traced = _traced(
        lambda a, b, c, keep: compiled_ops.global_topk_masks_dynamic([a, b, c], keep[0]),
        monkeypatch)
    total = sum(int(np.prod(s)) for s in shapes)
    for label in ("dense", "ties", "pruned", "nonfinite", "all_nan", "mixed"):
        if label == "mixed":  # one tensor of tiny scores loses all but its best
            scores = [_score_sets(rng, shapes[0])["dense"] * 1e-6,
                      _score_sets(rng, shapes[1])["nonfinite"],
                      _score_sets(rng, shapes[2])["dense"] + 10.0]
        else:
            scores = [_score_sets(rng, s)[label] for s in shapes]
        for sparsity in SPARSITIES:
            keep = np.array([compiled_ops.keep_count(sparsity, total, len(shapes))], np.int32)
            expected = [to_np(m) for m in mask_ops.global_topk_masks(scores, sparsity)]
            got = [to_np(m) for m in traced(*scores, keep)]
            for e, g in zip(expected, got):
                assert np.array_equal(g, e), (label, sparsity)


def test_channel_dynamic_mask_equals_eager(rng):
    pattern = ks.patterns.get("channel")
    layout = ks.patterns.Layout(input_axes=(-2,), output_axes=(-1,))
    for scores in _score_sets(rng, (3, 3, 4, 10)).values():
        for sparsity in SPARSITIES:
            keep = pattern.dynamic_keep(sparsity, scores.shape, layout)
            expected = to_np(pattern.mask(scores, sparsity, layout))
            got = to_np(pattern.dynamic_mask(scores, np.int32(keep), layout))
            assert np.array_equal(got, expected), sparsity


# ---------------------------------------------------------------- layers
def _model(global_pruning=False, pattern="unstructured"):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((10, 10, 2)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3),
    ])
    schedule = ks.schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=500, frequency=100)
    model = ks.prune(model, 0.9, schedule=schedule, pattern=pattern,
                     distribution="global" if global_pruning else "uniform")
    model.compile("adam", "mse")
    return model


def _masks(model):
    return [to_np(layer.get_mask(n)) for layer in sparse_layers(model)
            for n in layer.sparse_weight_names]


def _latents(model):
    return [to_np(layer.latent_weight(n)) for layer in sparse_layers(model)
            for n in layer.sparse_weight_names]


def _perturb(models, seed):
    """The same random change of the latent weights of each model (new
    magnitudes between updates, some exact ties)."""
    rng = np.random.default_rng(seed)
    for layers in zip(*(sparse_layers(m) for m in models)):
        for name in layers[0].sparse_weight_names:
            shape = tuple(layers[0].latent_weight(name).shape)
            noise = np.round(rng.standard_normal(shape), 1).astype(np.float32)
            for layer in layers:
                latent = layer.latent_weight(name)
                latent.assign(to_np(latent) + noise)


@pytest.mark.tf_only
@pytest.mark.parametrize("global_pruning,pattern", [
    (False, "unstructured"), (True, "unstructured"), (False, "channel")])
def test_compiled_updates_equal_eager_over_a_schedule(monkeypatch, global_pruning, pattern):
    if backend_name() != "tensorflow":
        pytest.skip("compiled updates run on TensorFlow")
    eager_model = _model(global_pruning, pattern)
    compiled_model = _model(global_pruning, pattern)
    callbacks = {}
    for label, model in (("eager", eager_model), ("compiled", compiled_model)):
        callback = ks.callbacks.Pruning()
        callback.set_model(model)
        callback.on_train_begin()
        callbacks[label] = callback
    for i, step in enumerate((100, 200, 300, 400, 500)):
        _perturb([eager_model, compiled_model], seed=i)
        monkeypatch.setattr(backend, "COMPILED_UPDATES", False)
        callbacks["eager"].update_masks(step)
        monkeypatch.setattr(backend, "COMPILED_UPDATES", True)
        callbacks["compiled"].update_masks(step)
        for e, c in zip(_masks(eager_model), _masks(compiled_model)):
            assert np.array_equal(e, c), step
        for e, c in zip(_latents(eager_model), _latents(compiled_model)):
            assert np.array_equal(e, c), step
        for e, c in zip(sparse_layers(eager_model), sparse_layers(compiled_model)):
            assert e.sparsity == c.sparsity
    # One trace per group served every update.
    functions = [f for layer in sparse_layers(compiled_model)
                 for f in layer.__dict__.get("_compiled_writes", {}).values()]
    expected_groups = 1 if global_pruning else len(sparse_layers(compiled_model))
    assert len(functions) == expected_groups
    assert all(backend.tracing_count(f) == 1 for f in functions)


@pytest.mark.tf_only
def test_large_groups_and_accumulating_scorers_stay_eager(monkeypatch):
    if backend_name() != "tensorflow":
        pytest.skip("compiled updates run on TensorFlow")
    monkeypatch.setattr(backend, "COMPILED_UPDATES", True)
    model = _model()
    layers = sparse_layers(model)
    method = ks.methods.Gradual()
    assert method.compiled_update(100, (layers[0],), {}) is not None
    monkeypatch.setattr(backend, "COMPILED_UPDATE_MAX_SIZE", 10)
    assert method.compiled_update(100, (layers[0],), {}) is None
    monkeypatch.setattr(backend, "COMPILED_UPDATE_MAX_SIZE", 1 << 15)
    layers[0].configure_pruning(layers[0].schedule, scorer="random")
    assert method.compiled_update(100, (layers[0],), {}) is None


@pytest.mark.slow
def test_fit_masks_equal_with_and_without_compiled_updates(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64 * 12, 10, 10, 2)).astype(np.float32)
    y = rng.standard_normal((64 * 12, 3)).astype(np.float32)
    results = []
    for compiled in (False, True):
        monkeypatch.setattr(backend, "COMPILED_UPDATES", compiled)
        model = _model()
        model.layers[0].schedule = ks.schedules.PolynomialDecay(
            0.0, 0.8, begin_step=0, end_step=10, frequency=3)
        for layer in sparse_layers(model)[1:]:
            layer.schedule = model.layers[0].schedule
        history = model.fit(x, y, batch_size=64, epochs=2, verbose=0, shuffle=False,
                            callbacks=[ks.callbacks.Pruning()])
        results.append((_masks(model), _latents(model), history.history["sparsity"]))
    (masks_a, latents_a, logs_a), (masks_b, latents_b, logs_b) = results
    for a, b in zip(masks_a, masks_b):
        assert np.array_equal(a, b)
    for a, b in zip(latents_a, latents_b):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert logs_a == logs_b
