"""Learned sparsity gates: hard-concrete L0 gates with a Lagrangian and soft
threshold reparametrization (STR). The formulas against numpy references,
the layer's gate state (shapes, deterministic and random paths, the loss it
adds, saving), conversion with ``ks.gate`` / ``ks.strip`` / ``ks.quantize``,
and fit-level runs on digits."""

import math
import os

import keras
import numpy as np
import pytest
from conftest import backend_grad
from conftest import to_np

import keras_sparse as ks
from keras_sparse import gates
from keras_sparse.ops import gates as gate_ops

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------- formulas
def test_hard_concrete_sample_matches_numpy(rng):
    log_alpha = rng.normal(0, 3, size=(50, 7)).astype("float32")
    u = rng.uniform(1e-4, 1 - 1e-4, size=(50, 7)).astype("float32")
    s = _sigmoid((np.log(u) - np.log(1 - u) + log_alpha) / BETA)
    expected = np.clip(s * (ZETA - GAMMA) + GAMMA, 0, 1)
    got = to_np(gate_ops.hard_concrete_sample(log_alpha, u))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.any(got == 0.0) and np.any(got == 1.0)


def test_hard_concrete_gate_matches_numpy_and_is_exactly_zero_below_the_cut():
    log_alpha = np.linspace(-8, 8, 161).astype("float32")
    expected = np.clip(_sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)
    got = to_np(gate_ops.hard_concrete_gate(log_alpha))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    cut = math.log((1 / 12) / (1 - 1 / 12))  # sigmoid(cut) = -gamma / (zeta - gamma)
    np.testing.assert_array_equal(got == 0.0, log_alpha <= cut + 1e-6)


def test_keep_probability_matches_formula_and_sampling(rng):
    log_alpha = np.array([-4.0, -2.0, 0.0, 1.5, 4.0], "float32")
    expected = _sigmoid(log_alpha - BETA * np.log(-GAMMA / ZETA))
    np.testing.assert_allclose(
        to_np(gate_ops.hard_concrete_keep_probability(log_alpha)), expected, rtol=1e-6)
    # The formula is P(z > 0) of the sampled gate.
    u = rng.uniform(1e-6, 1 - 1e-6, size=(200_000, 5)).astype("float32")
    z = to_np(gate_ops.hard_concrete_sample(np.broadcast_to(log_alpha, u.shape), u))
    np.testing.assert_allclose((z > 0).mean(axis=0), expected, atol=0.005)


def test_soft_threshold_forward_and_gradients(rng):
    w = rng.normal(0, 1, size=(6, 5)).astype("float32")
    w[0, :2] = 0.0
    s = np.float32(-0.5)
    threshold = _sigmoid(s)
    expected = np.sign(w) * np.maximum(np.abs(w) - threshold, 0)
    got = to_np(gate_ops.soft_threshold(w, s))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert np.all(got[np.abs(w) <= threshold] == 0.0)
    cot = rng.normal(size=w.shape).astype("float32")
    grad_w, grad_s = backend_grad(
        lambda a, b: keras.ops.sum(gate_ops.soft_threshold(a, b) * keras.ops.convert_to_tensor(cot)),
        [w, s])
    passes = np.abs(w) > threshold
    np.testing.assert_allclose(grad_w, cot * passes, rtol=1e-6)
    ref_s = np.sum(cot * -np.sign(w) * passes) * threshold * (1 - threshold)
    np.testing.assert_allclose(grad_s, ref_s, rtol=1e-5)


def test_soft_threshold_per_unit_broadcasts():
    w = np.array([[0.3, -0.3], [0.9, 0.05]], "float32")
    s = np.array([[-100.0, 0.0]], "float32")  # unit 0 no threshold, unit 1 at 0.5
    got = to_np(gate_ops.soft_threshold(w, s))
    np.testing.assert_allclose(got, [[0.3, 0.0], [0.9, 0.0]], atol=1e-7)


def test_lagrangian_and_warmup():
    np.testing.assert_allclose(to_np(gate_ops.lagrangian(0.5, 0.9, 1.0, 10.0)),
                               -0.4 + 10 * 0.16, rtol=1e-6)
    steps = np.array([0.0, 50.0, 100.0, 500.0], "float32")
    np.testing.assert_allclose(to_np(gate_ops.warmup_target(steps, 0.9, 100)),
                               [0.0, 0.45, 0.9, 0.9], rtol=1e-6)
    np.testing.assert_allclose(to_np(gate_ops.warmup_target(steps, 0.9, 0)), [0.9] * 4)


# ------------------------------------------------------------- config objects
@pytest.mark.parametrize("alias,cls", [("l0", gates.HardConcrete),
                                       ("hard_concrete", gates.HardConcrete),
                                       ("str", gates.SoftThreshold),
                                       ("soft_threshold", gates.SoftThreshold)])
def test_aliases_and_config_round_trip(alias, cls):
    gate = gates.get(alias)
    assert type(gate) is cls
    again = gates.deserialize(gates.serialize(gate.with_sparsity(0.7)))
    assert again == gate.with_sparsity(0.7) and again.sparsity == 0.7
    assert gates.get(None) is None


@pytest.mark.parametrize("make,text", [
    (lambda: gates.HardConcrete(sparsity=1.0), "sparsity"),
    (lambda: gates.HardConcrete(per="tensor"), "per='tensor'"),
    (lambda: gates.SoftThreshold(per="weight"), "per='weight'"),
    (lambda: gates.HardConcrete(warmup_steps=-1), "warmup_steps"),
    (lambda: gates.SoftThreshold(temperature=0.0), "temperature"),
    (lambda: gates.HardConcrete(seed="x"), "seed"),
    (lambda: gates.get("l1"), "gate='l1'"),
])
def test_bad_arguments_name_the_value(make, text):
    with pytest.raises(ValueError, match="Received: .*" + text.replace("(", r"\(")):
        make()


# -------------------------------------------------------------------- layers
def _dense(gate, units=6, inputs=5):
    layer = ks.layers.SparseDense(units, gate=gate)
    layer.build((None, inputs))
    return layer


def test_unit_gates_have_one_entry_per_output_unit():
    dense = _dense(gates.HardConcrete(per="unit"))
    assert tuple(dense.gate_state("kernel")["log_alpha"].shape) == (1, 6)
    conv = ks.layers.SparseConv2D(4, 3, gate=gates.SoftThreshold(per="unit"))
    conv.build((None, 8, 8, 2))
    assert tuple(conv.gate_state("kernel")["threshold"].shape) == (1, 1, 1, 4)
    assert tuple(_dense("str").gate_state("kernel")["threshold"].shape) == ()
    assert tuple(_dense("l0").gate_state("kernel")["log_alpha"].shape) == (5, 6)


def test_closed_unit_gates_remove_whole_units():
    dense = _dense(gates.HardConcrete(per="unit"))
    dense.gate_state("kernel")["log_alpha"].assign(
        np.array([[5.0, -5.0, 5.0, -5.0, 0.0, 5.0]], "float32"))
    kernel = to_np(dense.kernel)
    latent = to_np(dense.latent_weight("kernel"))
    np.testing.assert_array_equal(kernel[:, [1, 3]], 0.0)
    np.testing.assert_allclose(kernel[:, [0, 2, 5]], latent[:, [0, 2, 5]], rtol=1e-6)
    np.testing.assert_allclose(kernel[:, 4], latent[:, 4] * 0.5, rtol=1e-6)
    assert dense.sparsity == pytest.approx(2 / 6)


def test_training_draws_random_gates_from_the_layer_seed_generator():
    dense = _dense(gates.HardConcrete(seed=3, initial_log_alpha=0.0))
    x = np.ones((2, 5), "float32")
    seed = dense.gate_state("kernel")["seed_generator"]
    before = to_np(seed.state)
    a, b = to_np(dense(x, training=True)), to_np(dense(x, training=True))
    assert not np.allclose(a, b)
    assert not np.array_equal(before, to_np(seed.state))
    np.testing.assert_allclose(to_np(dense(x)), to_np(dense(x)))
    assert seed.state in dense.non_trainable_variables


def test_training_adds_the_lagrangian_and_updates_the_multipliers():
    gate = gates.HardConcrete(sparsity=0.5, warmup_steps=4, lambda1_rate=0.1, lambda2_rate=1.0)
    dense = _dense(gate)
    state = dense.gate_state("kernel")
    x = np.ones((2, 5), "float32")
    dense(x)
    assert not dense.losses and float(to_np(state["step"])) == 0.0
    keep = _sigmoid(2.5 - BETA * np.log(-GAMMA / ZETA))
    expected = 1.0 - keep
    lambda2 = 0.0
    for step in range(6):
        dense(x, training=True)
        target = 0.5 * min(1.0, step / 4)
        gap = expected - target
        (loss,) = dense.losses
        # Loss of this step with the multipliers before its update.
        lambda1 = 0.1 * sum(expected - 0.5 for k in range(4, step))
        np.testing.assert_allclose(to_np(loss), lambda1 * gap + lambda2 * gap**2, rtol=1e-4,
                                   atol=1e-6)
        lambda2 += gap**2
        np.testing.assert_allclose(to_np(state["lambda2"]), lambda2, rtol=1e-4)
    assert float(to_np(state["step"])) == 6.0
    # Below target after the warm-up: lambda1 went negative (rewards sparsity).
    assert float(to_np(state["lambda1"])) < 0


def test_lagrangian_gradient_wrt_log_alpha(rng):
    # The loss the Lagrangian adds, as a function of log_alpha, against its
    # derivative by hand: with e = 1 - mean(p), p = sigmoid(la - beta log(-gamma/zeta)),
    # d/d la_i [l1 (e - t) + l2 (e - t)^2] = -(l1 + 2 l2 (e - t)) p_i (1 - p_i) / N.
    log_alpha = rng.normal(0, 2, size=(4, 3)).astype("float32")
    l1, l2, t = -1.5, 3.0, 0.6

    def loss(la):
        e = 1.0 - keras.ops.mean(gate_ops.hard_concrete_keep_probability(la))
        return gate_ops.lagrangian(e, t, l1, l2)

    (got,) = backend_grad(loss, [log_alpha])
    p = _sigmoid(log_alpha - BETA * np.log(-GAMMA / ZETA))
    e = 1.0 - p.mean()
    expected = -(l1 + 2 * l2 * (e - t)) * p * (1 - p) / p.size
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-8)


def test_hard_concrete_sample_gradient_wrt_log_alpha(rng):
    log_alpha = rng.normal(0, 1, size=(20,)).astype("float32")
    u = rng.uniform(0.05, 0.95, size=(20,)).astype("float32")
    (got,) = backend_grad(lambda la: keras.ops.sum(gate_ops.hard_concrete_sample(la, u)),
                          [log_alpha])
    s = _sigmoid((np.log(u) - np.log(1 - u) + log_alpha) / BETA)
    z = s * (ZETA - GAMMA) + GAMMA
    inside = (z > 0) & (z < 1)
    np.testing.assert_allclose(got, inside * (ZETA - GAMMA) * s * (1 - s) / BETA, rtol=1e-4,
                               atol=1e-7)


def test_str_layer_is_soft_thresholded_and_exactly_sparse():
    dense = _dense(gates.SoftThreshold(initial_threshold=-2.0))
    latent = to_np(dense.latent_weight("kernel"))
    expected = np.sign(latent) * np.maximum(np.abs(latent) - _sigmoid(-2.0), 0)
    np.testing.assert_allclose(to_np(dense.kernel), expected, rtol=1e-5, atol=1e-7)
    assert dense.sparsity == pytest.approx(np.mean(expected == 0))
    x = np.ones((2, 5), "float32")
    inference = to_np(dense(x))
    np.testing.assert_allclose(to_np(dense(x, training=True)), inference, rtol=1e-6)
    # The decay on s is the layer's own loss while training.
    (loss,) = dense.losses
    np.testing.assert_allclose(to_np(loss), 1e-4 * 4.0, rtol=1e-5)


def test_layer_config_round_trip_keeps_the_gate():
    layer = ks.layers.SparseDense(4, gate=gates.HardConcrete(0.8, per="unit", seed=1))
    again = ks.layers.SparseDense.from_config(layer.get_config())
    assert again.gate == layer.gate
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert restored.gate == layer.gate


def _model(gate):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    return ks.gate(model, gate)


def _close_some(model):
    for layer in model.layers:
        state = layer.gate_state("kernel")
        if "log_alpha" in state:
            values = np.where(np.arange(np.prod(state["log_alpha"].shape)) % 3 == 0, -4.0, 2.5)
            state["log_alpha"].assign(values.reshape(state["log_alpha"].shape).astype("float32"))
        else:
            state["threshold"].assign(-1.5)


@pytest.mark.parametrize("gate", ["l0", "str", gates.HardConcrete(0.5, per="unit", seed=2)])
def test_keras_round_trip_keeps_latents_gate_state_and_outputs(tmp_path, gate):
    model = _model(gate)
    _close_some(model)
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
    model.fit(x, np.zeros((16, 3), "float32"), epochs=1, verbose=0)
    path = os.path.join(tmp_path, "gated.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for old, new in zip(model.layers, loaded.layers):
        assert new.gate == old.gate
        np.testing.assert_array_equal(to_np(new.latent_weight("kernel")),
                                      to_np(old.latent_weight("kernel")))
        for key, value in old.gate_state("kernel").items():
            if isinstance(value, keras.Variable):
                np.testing.assert_array_equal(to_np(new.gate_state("kernel")[key]), to_np(value))
        for a, b in zip(old.gate_seed_states(), new.gate_seed_states()):
            np.testing.assert_array_equal(to_np(a), to_np(b))
    np.testing.assert_array_equal(to_np(loaded(x)), to_np(model(x)))
    # The seed states were saved: random training draws continue identically.
    np.testing.assert_array_equal(to_np(loaded(x, training=True)), to_np(model(x, training=True)))


@pytest.mark.parametrize("gate", ["l0", "str"])
def test_strip_stores_the_deterministic_zeros_and_report_counts_them(gate):
    model = _model(gate)
    _close_some(model)
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
    plain = ks.strip(model)
    assert all(type(layer) is keras.layers.Dense for layer in plain.layers)
    np.testing.assert_allclose(to_np(plain(x)), to_np(model(x)), rtol=1e-5, atol=1e-6)
    zeros = sum(int(np.sum(to_np(layer.kernel) == 0)) for layer in plain.layers)
    size = sum(int(np.prod(layer.kernel.shape)) for layer in plain.layers)
    assert zeros > 0
    expected = [1.0 - np.count_nonzero(to_np(l.kernel)) / np.prod(l.kernel.shape)
                for l in plain.layers]
    assert [layer.sparsity for layer in model.layers] == pytest.approx(expected)
    report = ks.report(model, print_fn=lambda *a: None)
    assert report.totals["masked_nonzeros"] == size - zeros
    assert report.totals["sparsity"] == pytest.approx(zeros / size)


def test_quantize_and_prune_keep_what_the_gate_learned():
    model = _model(gates.HardConcrete(0.5))
    _close_some(model)
    log_alpha = [to_np(layer.gate_state("kernel")["log_alpha"]) for layer in model.layers]
    quantized = ks.quantize(model, 8)
    pruned = ks.prune(quantized, 0.2)
    for layer, value in zip(pruned.layers, log_alpha):
        assert layer.gate == gates.HardConcrete(0.5)
        assert layer.kernel_quantizer is not None and layer.has_masks
        np.testing.assert_array_equal(to_np(layer.gate_state("kernel")["log_alpha"]), value)


def test_gate_on_subclassed_model_in_place():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, name="hidden")
            self.out = keras.layers.Dense(2, name="out")

        def call(self, x):
            return self.out(self.hidden(x))

    net = Net()
    x = np.ones((3, 5), "float32")
    net(x)
    same = ks.gate(net, "str", layers=["hidden"])
    assert same is net
    assert net.hidden.gate == gates.SoftThreshold() and not ks.layers.is_sparse_layer(net.out)
    net.compile("adam", "mse")
    net.fit(x, np.zeros((3, 2), "float32"), epochs=1, verbose=0)
    ks.strip(net)
    assert type(net.hidden) is keras.layers.Dense


def test_gate_sets_per_layer_targets_and_rejects_bad_input():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="a"),
                              keras.layers.Dense(2, name="b")])
    gated = ks.gate(model, "l0", layers={"a": 0.8})
    assert gated.get_layer("a").gate.sparsity == 0.8
    assert not ks.layers.is_sparse_layer(gated.get_layer("b"))
    assert ks.gate(model, "l0", 0.6).get_layer("b").gate.sparsity == 0.6
    with pytest.raises(ValueError, match="Received: gate=None"):
        ks.gate(model, None)
    with pytest.raises(ValueError, match="sparsity"):
        ks.gate(model, "l0", 1.5)


# ------------------------------------------------------------------ fit-level
def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y


def _mlp():
    return keras.Sequential([keras.Input((64,)),
                             keras.layers.Dense(128, activation="relu", name="h1"),
                             keras.layers.Dense(128, activation="relu", name="h2"),
                             keras.layers.Dense(10, name="out")])


def _overall(model, values):
    sizes = [int(np.prod(layer.latent_weight("kernel").shape)) for layer in model.layers]
    return float(np.dot(values, sizes) / sum(sizes))


def _fit(model, epochs, lr=1e-2):
    x, y = _digits()
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], epochs=epochs, batch_size=64, verbose=0)
    return model.evaluate(x[1400:], y[1400:], verbose=0)[1]


@pytest.mark.slow
@pytest.mark.tf_only
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="fit-level runs on TF")
def test_l0_fit_reaches_the_target_expected_and_realised():
    keras.utils.set_random_seed(0)
    model = ks.gate(_mlp(), gates.HardConcrete(0.9, warmup_steps=800))
    accuracy = _fit(model, epochs=80, lr=2e-2)
    expected = _overall(model, [layer.expected_sparsity() for layer in model.layers])
    realised = _overall(model, [layer.sparsity for layer in model.layers])
    assert abs(expected - 0.9) <= 0.01, expected
    assert abs(realised - 0.9) <= 0.01, realised
    assert accuracy > 0.9
    totals = ks.report(model, print_fn=lambda *a: None).totals
    assert totals["sparsity"] == pytest.approx(realised, abs=1e-6)


@pytest.mark.slow
@pytest.mark.tf_only
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="fit-level runs on TF")
def test_str_fit_learns_a_sparsity_and_strips_exactly():
    keras.utils.set_random_seed(0)
    model = ks.gate(_mlp(), gates.SoftThreshold(threshold_decay=1e-3))
    accuracy = _fit(model, epochs=30)
    sparsity = [layer.sparsity for layer in model.layers]
    assert all(s > 0.05 for s in sparsity), sparsity
    assert accuracy > 0.9
    x, _ = _digits()
    plain = ks.strip(model)
    np.testing.assert_allclose(to_np(plain(x[:64])), to_np(model(x[:64])), rtol=1e-5, atol=1e-5)
    for layer, s in zip(plain.layers, sparsity):
        kernel = to_np(layer.kernel)
        assert np.mean(kernel == 0) == pytest.approx(s)


@pytest.mark.slow
@pytest.mark.tf_only
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="fit-level runs on TF")
def test_unit_gates_fit_remove_whole_units():
    keras.utils.set_random_seed(0)
    # The output layer keeps its units (one per class).
    model = ks.gate(_mlp(), gates.HardConcrete(0.5, per="unit", warmup_steps=300),
                    layers=["h1", "h2"])
    accuracy = _fit(model, epochs=25)
    assert accuracy > 0.9
    hidden = model.layers[0]
    kernel = to_np(hidden.kernel)
    removed = np.all(kernel == 0, axis=0)
    assert removed.sum() > 10
    # Removed units are exactly the closed gates; open units keep their
    # latent weights (times the gate).
    gate = to_np(gate_ops.hard_concrete_gate(hidden.gate_state("kernel")["log_alpha"]))[0]
    np.testing.assert_array_equal(removed, gate == 0)
    assert np.all(np.any(kernel[:, ~removed] != 0, axis=0))


@pytest.mark.parametrize("cls,kwargs,shape", [
    (ks.layers.SparseDense, {"units": 4, "gate": "l0"}, (2, 3)),
    (ks.layers.SparseDense, {"units": 4, "gate": gates.HardConcrete(0.5, per="unit")}, (2, 3)),
    (ks.layers.SparseConv2D, {"filters": 3, "kernel_size": 2,
                              "gate": gates.SoftThreshold(per="unit")}, (2, 5, 5, 2)),
])
def test_gated_layers_pass_the_layer_contract(cls, kwargs, shape):
    ks.testing.run_layer_test(cls, kwargs, input_shape=shape)


@pytest.mark.parametrize("gate", ["l0", "str"])
def test_export_of_a_gated_quantized_model_reloads_identically(tmp_path, gate):
    model = ks.quantize(_model(gate), 4)
    _close_some(model)
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    path = os.path.join(tmp_path, "gated.kspz")
    info = ks.export(model, path)
    # The kernels are stored as 4-bit codes of the gated weight, not floats.
    kernels = [w for w in info["weights"] if w["weight"] == "kernel"]
    assert kernels and all("affine" in w["encoding"] for w in kernels), kernels
    loaded = ks.load_exported(path)
    np.testing.assert_allclose(to_np(loaded(x)), to_np(model(x)), rtol=1e-5, atol=1e-6)


def test_fit_advances_the_gate_state_on_every_backend():
    # The warm-up step, the multipliers and the seed generator are updated
    # inside the training step (JAX: returned by its stateless step).
    model = _model(gates.HardConcrete(0.5, warmup_steps=2, seed=0))
    layer = model.layers[0]
    state = layer.gate_state("kernel")
    seed_before = to_np(state["seed_generator"].state).copy()
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    x = np.random.default_rng(0).normal(size=(12, 5)).astype("float32")
    model.fit(x, np.zeros((12, 3), "float32"), batch_size=4, epochs=2, verbose=0)
    if keras.backend.backend() == "jax":
        model.jax_state_sync()
    assert float(to_np(state["step"])) == 6.0
    assert float(to_np(state["lambda2"])) > 0.0
    assert float(to_np(state["lambda1"])) != 0.0
    assert not np.array_equal(to_np(state["seed_generator"].state), seed_before)
    assert not np.allclose(to_np(state["log_alpha"]), 2.5)
