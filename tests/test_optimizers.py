import json
import warnings

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_sparse as ks
from conftest import to_np
from keras_sparse.optimizers import Bop
from keras_sparse.optimizers import CaseOptimizer
from keras_sparse.optimizers import IsBinary
from keras_sparse.optimizers import PathMatches


def _assert_optimizer_types(optimizers, expected):
    """Each optimizer is exactly ``expected``'s class, or on torch its
    backend subclass (``keras.optimizers.Adam`` deserializes to
    ``keras.src.backend.torch.optimizers.torch_adam.Adam`` there)."""
    assert len(optimizers) == len(expected)
    for optimizer, cls in zip(optimizers, expected):
        assert isinstance(optimizer, cls) and type(optimizer).__name__ == cls.__name__


def bop_reference(w, m, grads, gamma, threshold):
    """Numpy Bop: m <- (1 - gamma) m + gamma g; w <- -w where |m| > tau and
    sign(m) == sign(w). Returns the weights and momenta after every step."""
    w, m = w.astype(np.float64), m.astype(np.float64)
    out = []
    for g in grads:
        m = (1 - gamma) * m + gamma * g
        flip = (np.abs(m) > threshold) & (np.sign(m) == np.sign(w))
        w = np.where(flip, -w, w)
        out.append((w.copy(), m.copy()))
    return out


def _bop_steps(optimizer, w0, grads):
    variable = keras.Variable(w0, name="kernel")
    optimizer.build([variable])
    states = []
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
        states.append((to_np(variable).copy(), to_np(optimizer._momentums[0]).copy()))
    return states


def test_bop_flip_rule_matches_numpy_over_several_steps():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(6, 5)).astype("float32")
    w0[0, 0] = 0.0  # an exact zero (a pruned position) can never move
    grads = [rng.normal(scale=1e-2, size=w0.shape).astype("float32") for _ in range(12)]
    gamma, threshold = 0.05, 2e-4
    got = _bop_steps(Bop(threshold=threshold, gamma=gamma), w0, grads)
    want = bop_reference(w0, np.zeros_like(w0), grads, gamma, threshold)
    flips = 0
    for step, ((w, m), (w_ref, m_ref)) in enumerate(zip(got, want)):
        np.testing.assert_allclose(m, m_ref, rtol=1e-5, atol=1e-9, err_msg=f"step {step}")
        np.testing.assert_array_equal(w, w_ref.astype("float32"), err_msg=f"step {step}")
        flips += int(np.count_nonzero(np.sign(w) != np.sign(w0)))
    assert flips > 0  # the test really exercises flipping
    final = got[-1][0]
    np.testing.assert_array_equal(np.abs(final), np.abs(w0))
    assert final[0, 0] == 0.0


def test_bop_threshold_is_strict_and_direction_matters():
    # gamma = 1: the momentum is exactly the last gradient.
    w0 = np.array([1.0, 1.0, -1.0, -1.0, 0.5, -0.5], "float32")
    g = np.array([0.5, -0.7, -0.6, 0.9, 0.25, -0.2], "float32")
    (w, m), = _bop_steps(Bop(threshold=0.5, gamma=1.0), w0, [g])
    np.testing.assert_array_equal(m, g)
    # |m| = 0.5 is not > 0.5: no flip; opposite signs never flip; same sign
    # with |m| > tau flips; below threshold stays.
    np.testing.assert_array_equal(w, [1.0, 1.0, 1.0, -1.0, 0.5, -0.5])


@settings(max_examples=20)
@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 1.0), st.floats(0.0, 1e-2))
def test_bop_only_flips_signs(seed, gamma, threshold):
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=(4, 3)).astype("float32")
    grads = [rng.normal(scale=1e-2, size=w0.shape).astype("float32") for _ in range(3)]
    before = w0
    for w, m in _bop_steps(Bop(threshold=threshold, gamma=gamma), w0, grads):
        np.testing.assert_array_equal(np.abs(w), np.abs(w0))
        flipped = np.sign(w) != np.sign(before)
        # Every flip went in the direction of the momentum, past the threshold.
        assert np.all(np.sign(m[flipped]) == np.sign(before[flipped]))
        assert np.all(np.abs(m[flipped]) > np.float32(threshold))
        before = w


def test_bop_gamma_schedule_and_config_round_trip():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    opt = Bop(threshold=1e-3, gamma=schedule, clipvalue=1.0)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(opt)))
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, Bop)
    assert restored.threshold == 1e-3 and restored.clipvalue == 1.0
    assert isinstance(restored._learning_rate, keras.optimizers.schedules.ExponentialDecay)
    assert "learning_rate" not in opt.get_config()
    # gamma follows the schedule: 0.1 at step 0, then halves each step.
    w0 = np.ones((3,), "float32")
    g = np.full((3,), 1.0, "float32")
    states = _bop_steps(opt, w0, [g, g])
    np.testing.assert_allclose(states[0][1], 0.1, rtol=1e-6)
    np.testing.assert_allclose(states[1][1], 0.1 + 0.05 * (1 - 0.1), rtol=1e-6)
    plain = Bop(threshold=2e-8, gamma=3e-4)
    again = Bop.from_config(plain.get_config())
    assert again.threshold == 2e-8
    np.testing.assert_allclose(float(to_np(again.gamma)), 3e-4, rtol=1e-6)
    # Configs written with Keras' name for the rate load too.
    legacy = dict(plain.get_config(), learning_rate=plain.get_config()["gamma"])
    legacy.pop("gamma")
    np.testing.assert_allclose(float(to_np(Bop.from_config(legacy).gamma)), 3e-4, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"threshold": -1.0}, "threshold"), ({"threshold": float("nan")}, "threshold"),
     ({"gamma": 0.0}, "gamma"), ({"gamma": 1.5}, "gamma"), ({"gamma": "fast"}, "gamma"),
     ({"weight_decay": 1e-4}, "weight_decay")],
)
def test_bop_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"{name}="):
        Bop(**kwargs)


# ------------------------------------------------------------ CaseOptimizer
def _variables():
    kernel = keras.Variable(np.ones((3, 2), "float32"), name="kernel")
    kernel.precision = 1
    other = keras.Variable(np.ones((3, 2), "float32"), name="other_kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    return kernel, other, bias


def test_case_optimizer_routes_first_matching_case_then_default():
    kernel, other, bias = _variables()
    bop, sgd, adam = Bop(), keras.optimizers.SGD(0.1), keras.optimizers.Adam()
    opt = CaseOptimizer(("binary", bop), (PathMatches("kernel"), sgd), default=adam)
    opt.build([kernel, other, bias])
    # kernel matches both cases: the first one wins.
    assert opt.optimizer_for(kernel) is bop
    assert opt.optimizer_for(other) is sgd
    assert opt.optimizer_for(bias) is adam
    assert opt.variables_of(bop) == [kernel]
    assert opt.optimizers == [bop, sgd, adam] and opt.default is adam
    assert [type(p) for p, _ in opt.cases] == [IsBinary, PathMatches]
    assert len(opt.variables) == len(opt._variables) + sum(len(o.variables) for o in opt.optimizers)


def test_case_optimizer_updates_equal_each_optimizer_on_its_own():
    rng = np.random.default_rng(0)
    init = [rng.normal(size=s).astype("float32") for s in ((3, 2), (3, 2), (2,))]
    steps = [[rng.normal(size=x.shape).astype("float32") for x in init] for _ in range(4)]

    variables = [keras.Variable(x) for x in init]
    variables[0].precision = 1
    opt = CaseOptimizer(("binary", Bop(threshold=0.0, gamma=0.5)),
                        default=keras.optimizers.Adam(0.01))
    for grads in steps:
        opt.apply(grads, variables)

    alone = [keras.Variable(x) for x in init]
    bop, adam = Bop(threshold=0.0, gamma=0.5), keras.optimizers.Adam(0.01)
    for grads in steps:
        grads = [keras.ops.convert_to_tensor(g) for g in grads]  # torch's Adam needs tensors
        bop.apply(grads[:1], alone[:1])
        adam.apply(grads[1:], alone[1:])

    for got, want in zip(variables, alone):
        np.testing.assert_array_equal(to_np(got), to_np(want))
    assert int(to_np(opt.iterations)) == 4
    assert [int(to_np(o.iterations)) for o in opt.optimizers] == [4, 4]


def test_case_optimizer_skips_a_group_without_gradients():
    kernel, other, bias = _variables()
    bop, adam = Bop(), keras.optimizers.Adam()
    opt = CaseOptimizer(("binary", bop), default=adam)
    opt.build([kernel, other, bias])
    opt.apply([None, np.ones((3, 2), "float32"), np.ones((2,), "float32")])
    assert int(to_np(bop.iterations)) == 0 and int(to_np(adam.iterations)) == 1
    np.testing.assert_array_equal(to_np(kernel), np.ones((3, 2)))


def test_case_optimizer_warns_when_a_case_matches_nothing():
    opt = CaseOptimizer(("binary", Bop()), default=keras.optimizers.Adam())
    with pytest.warns(UserWarning, match="matched none"):
        opt.build([keras.Variable(np.ones((2,), "float32"))])


def test_case_optimizer_learning_rate_is_the_default_optimizers():
    adam = keras.optimizers.Adam(1e-3)
    opt = CaseOptimizer(("binary", Bop(gamma=1e-4)), default=adam)
    np.testing.assert_allclose(float(to_np(opt.learning_rate)), 1e-3, rtol=1e-6)
    opt.learning_rate = 5e-4
    np.testing.assert_allclose(float(to_np(adam.learning_rate)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(to_np(opt.cases[0][1].gamma)), 1e-4, rtol=1e-6)


def test_case_optimizer_config_round_trip():
    opt = CaseOptimizer(
        ("binary", Bop(threshold=1e-6, gamma=1e-3)),
        (PathMatches("/dense_2/"), keras.optimizers.SGD(0.1)),
        default=keras.optimizers.Adam(2e-3),
        name="mixed",
    )
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(opt)))
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, CaseOptimizer) and restored.name == "mixed"
    assert [type(p) for p, _ in restored.cases] == [IsBinary, PathMatches]
    assert restored.cases[1][0].pattern == "/dense_2/"
    _assert_optimizer_types(restored.optimizers, [Bop, keras.optimizers.SGD, keras.optimizers.Adam])
    assert restored.cases[0][1].threshold == 1e-6


def test_case_optimizer_argument_errors():
    with pytest.raises(ValueError, match="default=None"):
        CaseOptimizer(("binary", Bop()))
    with pytest.raises(ValueError, match="predicate='ternary'"):
        CaseOptimizer(("ternary", Bop()), default=keras.optimizers.Adam())
    with pytest.raises(ValueError, match=r"cases\[0\]"):
        CaseOptimizer(("binary",), default=keras.optimizers.Adam())
    with pytest.raises(ValueError, match=r"cases\[0\]="):
        CaseOptimizer(("binary", "not an optimizer"), default=keras.optimizers.Adam())
    with pytest.raises(ValueError, match="same optimizer twice"):
        adam = keras.optimizers.Adam()
        CaseOptimizer(("binary", adam), default=adam)
    with pytest.raises(ValueError, match="loss_scale_factor"):
        CaseOptimizer(("binary", Bop(loss_scale_factor=8.0)), default=keras.optimizers.Adam())
    with pytest.raises(ValueError, match="pattern="):
        PathMatches("(")
    inner = CaseOptimizer(("binary", Bop()), default=keras.optimizers.Adam())
    with pytest.raises(ValueError, match="plain optimizers"):
        CaseOptimizer(("binary", inner), default=keras.optimizers.Adam())
    lam = CaseOptimizer((lambda v: True, Bop()), default=keras.optimizers.Adam())
    with pytest.raises(ValueError, match="lambda"):
        lam.get_config()


def test_case_optimizer_loss_scale_factor_reaches_every_sub_optimizer():
    kernel, other, bias = _variables()
    opt = CaseOptimizer(("binary", Bop(threshold=0.0, gamma=1.0)),
                        default=keras.optimizers.SGD(1.0), loss_scale_factor=4.0)
    assert all(o.loss_scale_factor == 4.0 for o in opt.optimizers)
    np.testing.assert_allclose(float(to_np(opt.scale_loss(2.0))), 8.0)
    grads = [np.full((3, 2), 4.0, "float32"), np.full((3, 2), 4.0, "float32"),
             np.full((2,), 4.0, "float32")]
    opt.apply(grads, [kernel, other, bias])
    # Gradients were unscaled to 1: SGD moves 1 - 1 = 0; Bop's momentum is 1.
    np.testing.assert_allclose(to_np(other), 0.0)
    np.testing.assert_allclose(to_np(opt.optimizers[0]._momentums[0]), 1.0)
    np.testing.assert_array_equal(to_np(kernel), -np.ones((3, 2)))


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="stateless_apply is JAX's path")
def test_case_optimizer_stateless_apply_equals_apply():
    rng = np.random.default_rng(1)
    init = [rng.normal(size=s).astype("float32") for s in ((3, 2), (2,))]
    grads = [rng.normal(size=x.shape).astype("float32") for x in init]

    def make():
        variables = [keras.Variable(x) for x in init]
        variables[0].precision = 1
        opt = CaseOptimizer(("binary", Bop(threshold=0.0, gamma=0.5)),
                            default=keras.optimizers.Adam(0.1))
        opt.build(variables)
        return variables, opt

    variables, opt = make()
    new_vars, new_opt_vars = opt.stateless_apply(
        [v.value for v in opt.variables], grads, [v.value for v in variables])
    ref_vars, ref_opt = make()
    ref_opt.apply(grads)
    for got, want in zip(new_vars, ref_vars):
        np.testing.assert_array_equal(np.asarray(got), to_np(want))
    for got, want in zip(new_opt_vars, ref_opt.variables):
        np.testing.assert_array_equal(np.asarray(got), to_np(want))


# ----------------------------------------------------------------- in fit
def _binary_mlp():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, name="binary_dense"),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(3, name="head"),
    ])
    model.get_layer("binary_dense").kernel.precision = 1
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 3, size=(64,))


def _compile(model, predicate="binary", jit_compile="auto"):
    model.compile(
        optimizer=CaseOptimizer((predicate, Bop(threshold=1e-5, gamma=0.05)),
                                default=keras.optimizers.Adam(1e-2)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", ["auto", True])
def test_case_optimizer_trains_binary_kernels_with_bop_in_fit(jit_compile):
    model = _binary_mlp()
    _compile(model, jit_compile=jit_compile)
    x, y = _data()
    before = [to_np(v).copy() for v in model.trainable_variables]
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    after = [to_np(v) for v in model.trainable_variables]
    kernel_before, kernel_after = before[0], after[0]
    np.testing.assert_array_equal(np.abs(kernel_after), np.abs(kernel_before))
    assert np.any(np.sign(kernel_after) != np.sign(kernel_before))
    for b, a in zip(before[1:], after[1:]):
        assert not np.array_equal(a, b)  # Adam moved everything else
    assert int(to_np(model.optimizer.iterations)) == 12


@pytest.mark.slow
def test_case_optimizer_saves_and_resumes_identically(tmp_path):
    model = _binary_mlp()
    _compile(model, PathMatches("(^|/)binary_dense/kernel$"))
    x, y = _data()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "bop.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    opt, ropt = model.optimizer, restored.optimizer
    assert isinstance(ropt, CaseOptimizer)
    _assert_optimizer_types(ropt.optimizers, [Bop, keras.optimizers.Adam])
    assert len(ropt.variables) == len(opt.variables)
    for a, b in zip(opt.variables, ropt.variables):
        np.testing.assert_array_equal(to_np(a), to_np(b), err_msg=a.path)
    assert ropt.optimizer_for(restored.get_layer("binary_dense").kernel) is ropt.cases[0][1]
    # One more identical epoch on both gives identical weights.
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    restored.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    for a, b in zip(model.trainable_variables, restored.trainable_variables):
        np.testing.assert_allclose(to_np(a), to_np(b), rtol=1e-6, atol=1e-7, err_msg=a.path)


@pytest.mark.slow
def test_case_optimizer_under_reduce_lr_on_plateau_and_loss_scaling():
    model = _binary_mlp()
    model.compile(
        optimizer=keras.optimizers.LossScaleOptimizer(
            CaseOptimizer(("binary", Bop()), default=keras.optimizers.Adam(1e-2))),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the binary case matched
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[
            keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0,
                                              min_delta=1e9)])
    case = model.optimizer.inner_optimizer
    np.testing.assert_allclose(float(to_np(case.default.learning_rate)), 5e-3, rtol=1e-5)
    np.testing.assert_allclose(float(to_np(case.cases[0][1].gamma)), 1e-4, rtol=1e-5)


def test_public_names():
    assert ks.optimizers.Bop is Bop and ks.optimizers.CaseOptimizer is CaseOptimizer
    assert ks.optimizers.is_binary_variable(_variables()[0])
    assert not ks.optimizers.is_binary_variable(_variables()[2])


# ------------------------------------------------------ quantized layers
def _quantized_mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8,)),
        ks.layers.SparseDense(16, kernel_quantizer="ste_sign", use_bias=False, name="b1"),
        keras.layers.BatchNormalization(name="bn"),
        ks.layers.SparseDense(16, kernel_quantizer="magnitude_aware_sign", name="b2"),
        ks.layers.SparseDense(3, kernel_quantizer=4, name="head"),
    ])


def test_binary_kernels_selects_exactly_the_one_bit_latent_weights():
    model = _quantized_mlp()
    predicate = ks.optimizers.binary_kernels(model)
    chosen = [v.path.split("/", 1)[1] for v in model.trainable_variables if predicate(v)]
    assert chosen == ["b1/kernel", "b2/kernel"]
    assert [layer.name for layer, _, _ in ks.optimizers.quantized_weights(model, bits=4)] == [
        "head"]
    with pytest.raises(ValueError, match="1-bit kernel_quantizer"):
        ks.optimizers.binary_kernels(
            keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))


@pytest.mark.slow
def test_bop_trains_quantized_layers_and_routing_survives_reload(tmp_path):
    model = _quantized_mlp()
    bop = Bop(threshold=1e-6, gamma=0.1)
    model.compile(
        optimizer=CaseOptimizer((ks.optimizers.binary_kernels(model), bop),
                                default=keras.optimizers.Adam(1e-2)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _data()
    latent = [model.get_layer(n).latent_weight("kernel") for n in ("b1", "b2", "head")]
    before = [to_np(v).copy() for v in latent]
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    after = [to_np(v) for v in latent]
    for b, a in zip(before[:2], after[:2]):
        np.testing.assert_array_equal(np.abs(a), np.abs(b))  # Bop only flips
        assert np.any(np.sign(a) != np.sign(b))
    assert not np.array_equal(np.abs(after[2]), np.abs(before[2]))  # Adam on the 4-bit layer
    # The forward pass uses the flipped signs.
    np.testing.assert_array_equal(to_np(model.get_layer("b1").kernel),
                                  np.where(after[0] >= 0, 1.0, -1.0))
    path = tmp_path / "bop_quantized.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    ropt = restored.optimizer
    assert ropt.variables_of(ropt.cases[0][1]) == [
        restored.get_layer("b1").latent_weight("kernel"),
        restored.get_layer("b2").latent_weight("kernel")]
    for a, b in zip(model.optimizer.variables, ropt.variables):
        np.testing.assert_array_equal(to_np(a), to_np(b))


def test_binary_predicate_matches_latent_kernels_of_binary_layers():
    model = keras.Sequential([
        keras.Input((8,)),
        ks.layers.SparseDense(4, kernel_quantizer="ste_sign"),
        ks.layers.SparseDense(2),
    ])
    predicate = ks.optimizers.get_predicate("binary")
    chosen = [v.path for v in model.trainable_variables if predicate(v)]
    assert chosen == [model.layers[0].latent_weight("kernel").path]
