"""``ks.prune_at_init``: SNIP, GraSP and SynFlow against numpy references.

The references are written out in float64 numpy (manual backpropagation of a
small tanh MLP, finite-difference Hessian-vector products, the closed form
of SynFlow's linear-network flow), independent of the code under test.
"""

import importlib
import warnings

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import at_init
from keras_sparse.utils import sparse_layers

pai = importlib.import_module("keras_sparse.prune_at_init")

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _batch(n=48, features=16, classes=4, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, features).astype("float32"), rng.randint(0, classes, size=n)


def _mlp(seed=0, hidden=12, activation="tanh", use_bias=True):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(hidden, activation=activation, use_bias=use_bias, name="d1"),
        keras.layers.Dense(4, use_bias=use_bias, name="d2",
                           bias_initializer=keras.initializers.RandomNormal(seed=1)),
    ])


def _params(model):
    return [
        (_np(layer.kernel).astype(np.float64), _np(layer.bias).astype(np.float64))
        for layer in model.layers
    ]


def _numpy_gradients(params, x, y):
    """d(mean cross-entropy)/d(kernels) of a tanh-hidden MLP, float64."""
    x = x.astype(np.float64)
    hs, zs = [x], []
    for i, (k, b) in enumerate(params):
        z = hs[-1] @ k + b
        zs.append(z)
        hs.append(np.tanh(z) if i < len(params) - 1 else z)
    logits = zs[-1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz = p.copy()
    dz[np.arange(len(y)), y] -= 1.0
    dz /= len(y)
    grads = [None] * len(params)
    for i in reversed(range(len(params))):
        grads[i] = hs[i].T @ dz
        if i:
            dh = dz @ params[i][0].T
            dz = dh * (1.0 - np.tanh(zs[i - 1]) ** 2)
    return grads


def _separated(kept, scores, rel=1e-5):
    """Every kept score is >= every removed score (up to float32 noise)."""
    kept, scores = kept.ravel(), scores.ravel()
    if kept.all() or not kept.any():
        return True
    tol = rel * np.abs(scores).max()
    return scores[kept].min() >= scores[~kept].max() - tol


def _masks(model):
    return [_np(layer.get_mask("kernel")).astype(bool) for layer in sparse_layers(model)]


# ---------------------------------------------------------------- SNIP
@pytest.mark.parametrize("distribution", ["uniform", "global"])
def test_snip_keeps_top_k_saliency(distribution):
    x, y = _batch()
    dense = _mlp()
    params = _params(dense)
    reference = [np.abs(g * k) for g, (k, _) in zip(_numpy_gradients(params, x, y), params)]
    model = ks.prune_at_init(dense, (x, y), 0.8, scorer="snip", loss=LOSS,
                             distribution=distribution)
    masks = _masks(model)
    if distribution == "uniform":
        for mask, scores in zip(masks, reference):
            assert (~mask).sum() == round(0.8 * mask.size)
            assert _separated(mask, scores)
    else:
        total = sum(m.size for m in masks)
        assert sum((~m).sum() for m in masks) == round(0.8 * total)
        assert _separated(np.concatenate([m.ravel() for m in masks]),
                          np.concatenate([s.ravel() for s in reference]))
    # Weights are untouched where kept, exact zeros where pruned.
    for layer, mask, (kernel, _) in zip(sparse_layers(model), masks, params):
        latent = _np(layer.latent_weight("kernel"))
        np.testing.assert_allclose(latent, np.where(mask, kernel, 0.0), rtol=1e-6)
        assert layer.schedule is None


def test_snip_averages_batches_of_an_iterable():
    x, y = _batch(n=64)
    dense = _mlp()
    params = _params(dense)
    halves = [(x[:32], y[:32]), (x[32:], y[32:])]
    grads = [_numpy_gradients(params, xb, yb) for xb, yb in halves]
    reference = [np.abs((a + b) / 2 * k) for a, b, (k, _) in zip(*grads, params)]
    model = ks.prune_at_init(dense, iter(halves + [(x, y)]), 0.7, scorer="saliency",
                             loss=LOSS, batches=2)
    for mask, scores in zip(_masks(model), reference):
        assert _separated(mask, scores)


def test_snip_uses_the_compiled_loss():
    x, y = _batch()
    dense = _mlp()
    dense.compile("sgd", LOSS)
    params = _params(dense)
    reference = [np.abs(g * k) for g, (k, _) in zip(_numpy_gradients(params, x, y), params)]
    model = ks.prune_at_init(dense, (x, y), 0.6)
    for mask, scores in zip(_masks(model), reference):
        assert _separated(mask, scores)
    assert model.compiled  # compiled like the input


# ---------------------------------------------------------------- GraSP
@pytest.mark.filterwarnings("ignore:A keras_sparse layer with a pruning schedule")
def test_grasp_keeps_top_k_weight_times_hessian_gradient():
    x, y = _batch()
    dense = _mlp()
    params = _params(dense)
    g = _numpy_gradients(params, x, y)
    eps = 1e-4
    plus = [(k + eps * gk, b) for (k, b), gk in zip(params, g)]
    minus = [(k - eps * gk, b) for (k, b), gk in zip(params, g)]
    hg = [(a - b) / (2 * eps) for a, b in zip(_numpy_gradients(plus, x, y),
                                              _numpy_gradients(minus, x, y))]
    reference = [k * h for (k, _), h in zip(params, hg)]
    # The implementation's own product agrees with the numpy one.
    model = ks.prune(dense, 0.5)
    entries = at_init.weight_entries(sparse_layers(model))
    loss_fn = pai._loss_function(model, LOSS)
    scores = at_init.grasp_scores(model, entries, [(x, y)], loss_fn)
    for got, want in zip(scores, reference):
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    pruned = ks.prune_at_init(dense, (x, y), 0.75, scorer="grasp", loss=LOSS)
    for mask, want in zip(_masks(pruned), reference):
        assert (~mask).sum() == round(0.75 * mask.size)
        assert _separated(mask, want, rel=1e-3)


# -------------------------------------------------------------- SynFlow
def _synflow_reference(kernels):
    """|W_l| * dR/d|W_l| for R = 1ᵀ |W_1| ... |W_L| 1 (no biases)."""
    absk = [np.abs(k.astype(np.float64)) for k in kernels]
    scores = []
    for i, k in enumerate(absk):
        left = np.ones((1, absk[0].shape[0]))
        for a in absk[:i]:
            left = left @ a
        right = np.ones((absk[-1].shape[1], 1))
        for a in reversed(absk[i + 1:]):
            right = a @ right
        scores.append(k * (left.T @ right.T))
    return scores


def test_synflow_one_round_matches_closed_form():
    dense = _mlp(use_bias=False, activation="relu")
    kernels = [k for k, _ in ((_np(l.kernel), None) for l in dense.layers)]
    reference = _synflow_reference(kernels)
    model = ks.prune_at_init(dense, None, 0.6, scorer="synflow", rounds=1,
                             distribution="global")
    masks = _masks(model)
    assert sum((~m).sum() for m in masks) == round(0.6 * sum(m.size for m in masks))
    assert _separated(np.concatenate([m.ravel() for m in masks]),
                      np.concatenate([s.ravel() for s in reference]))


def test_synflow_exponential_schedule_reaches_target_per_layer():
    model = ks.prune_at_init(_mlp(), None, 0.9, scorer="synflow", rounds=7)
    for mask in _masks(model):
        assert (~mask).sum() == round(0.9 * mask.size)


def _deep_narrow(seed=0, output_activation=None):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((16,))]
    layers += [keras.layers.Dense(32, activation="relu") for _ in range(8)]
    layers += [keras.layers.Dense(4, activation=output_activation)]
    return keras.Sequential(layers)


def _connected(masks):
    reach = np.ones((1, masks[0].shape[0]))
    for mask in masks:
        reach = (reach @ mask) > 0
    return bool(reach.any())


@pytest.mark.slow
@pytest.mark.parametrize("output_activation", [None, "softmax"])
def test_synflow_is_data_free_and_avoids_layer_collapse(output_activation):
    sparsity = 0.995
    model = ks.prune_at_init(_deep_narrow(output_activation=output_activation), None,
                             sparsity, scorer="synflow", distribution="global")
    masks = _masks(model)
    assert all(mask.any() for mask in masks), [int(m.sum()) for m in masks]
    assert _connected(masks)
    total = sum(m.size for m in masks)
    assert sum((~m).sum() for m in masks) == round(sparsity * total)
    # The activation was only replaced while scoring.
    assert model.layers[-1].activation is keras.activations.get(output_activation)


def test_synflow_bypasses_stand_alone_activation_layers():
    # A trailing Softmax layer makes the summed output constant: without the
    # bypass every SynFlow score is 0. With it the masks are those of the same
    # network without the layer (the closed form), and the layer works after.
    dense = _mlp(use_bias=False, activation="relu")
    kernels = [_np(l.kernel) for l in dense.layers]
    with_layer = keras.Sequential([keras.Input((16,))] + dense.layers + [keras.layers.Softmax()])
    model = ks.prune_at_init(with_layer, None, 0.6, scorer="synflow", rounds=1,
                             distribution="global")
    masks = _masks(model)
    assert _separated(np.concatenate([m.ravel() for m in masks]),
                      np.concatenate([s.ravel() for s in _synflow_reference(kernels)]))
    x = np.random.RandomState(0).randn(8, 16).astype("float32")
    out = _np(model(x))
    hidden = _np(keras.Sequential(model.layers[:-1])(x))
    np.testing.assert_allclose(out, _np(keras.ops.softmax(hidden)), rtol=1e-5, atol=1e-6)
    assert "call" not in vars(model.layers[-1])


def test_global_magnitude_collapses_where_synflow_does_not():
    # The contrast that makes the test above meaningful.
    model = ks.prune_at_init(_deep_narrow(), None, 0.99, scorer="magnitude",
                             distribution="global")
    masks = _masks(model)
    # Every layer keeps at least one weight, but the kept weights of
    # consecutive layers no longer line up: no path from input to output.
    assert all(mask.any() for mask in masks)
    assert not _connected(masks)


def test_synflow_needs_an_input_shape_for_subclassed_models():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(4)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 8), "float32"))
    with pytest.raises(ValueError, match="input_shape=None"):
        ks.prune_at_init(net, None, 0.5, scorer="synflow")
    pruned = ks.prune_at_init(net, None, 0.5, scorer="synflow", input_shape=(8,), rounds=3)
    assert _masks(pruned)[0].sum() == 16


# ------------------------------------------------------- shared behaviour
@pytest.mark.slow
def test_masks_stay_fixed_in_fit_without_a_callback():
    x, y = _batch()
    model = ks.prune_at_init(_mlp(), (x, y), 0.8, scorer="snip", loss=LOSS)
    before = _masks(model)
    model.compile("adam", LOSS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert not [w for w in caught if "Pruning()" in str(w.message)]
    for a, b, layer in zip(before, _masks(model), sparse_layers(model)):
        np.testing.assert_array_equal(a, b)
        effective = _np(layer.effective_weight("kernel"))
        assert np.all(effective[~b] == 0.0)


def test_scoring_leaves_batchnorm_statistics_alone():
    x, y = _batch()
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([
        keras.Input((16,)), keras.layers.Dense(12), keras.layers.BatchNormalization(),
        keras.layers.Dense(4),
    ])
    model = ks.prune_at_init(dense, (x, y), 0.5, scorer="grasp", loss=LOSS)
    bn = model.layers[1]
    np.testing.assert_array_equal(_np(bn.moving_mean), 0.0)
    np.testing.assert_array_equal(_np(bn.moving_variance), 1.0)


def test_random_erk_with_variance_rescale():
    dense = _mlp(hidden=40)
    kernels = [_np(layer.kernel) for layer in dense.layers]
    model = ks.prune_at_init(dense, None, 0.8, scorer="random", distribution="erk")
    densities = ks.ops.erk_densities([k.shape for k in kernels], 0.2)
    for mask, kernel, density, layer in zip(_masks(model), kernels, densities,
                                            sparse_layers(model)):
        assert mask.sum() == mask.size - round((1 - density) * mask.size)
        scale = np.sqrt(mask.shape[0] / np.maximum(mask.sum(axis=0), 1))
        np.testing.assert_allclose(_np(layer.latent_weight("kernel")),
                                   np.where(mask, kernel * scale, 0.0), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scorer="snip"), "data=None"),
    (dict(scorer="snip", data=_batch()), "loss=None"),
    (dict(scorer="synflow", rounds=0), "rounds=0"),
    (dict(scorer="snip", batches=0, data=_batch(), loss=LOSS), "batches=0"),
    (dict(scorer="bogus"), "scorer='bogus'"),
])
def test_invalid_arguments(kwargs, match):
    data = kwargs.pop("data", None)
    with pytest.raises(ValueError, match=match):
        ks.prune_at_init(_mlp(), data, 0.5, **kwargs)


@pytest.mark.parametrize("sparsity", [1.5, -0.1, 1.0, float("nan"), "0.5"], ids=repr)
def test_bad_sparsity_is_reported_before_missing_data_or_loss(sparsity):
    # SNIP (the default) also lacks its data and loss here: the sparsity is
    # the error reported.
    with pytest.raises(ValueError) as info:
        ks.prune_at_init(_mlp(), None, sparsity)
    assert f"sparsity={sparsity!r}" in str(info.value)


def test_structured_pattern_with_snip():
    x, y = _batch()
    model = ks.prune_at_init(_mlp(hidden=16), (x, y), 0.5, scorer="snip", loss=LOSS,
                             pattern="channel", layers=["d1"])
    mask = _masks(model)[0]
    assert np.all(mask.all(axis=0) | ~mask.any(axis=0))
    assert (~mask.any(axis=0)).sum() == 8
