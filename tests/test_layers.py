"""The sparse layer family: parity with the Keras parents, signatures, masks,
user-defined layers, LoRA, bad input, the missing-callback warning and XLA."""

import inspect
import warnings

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

import keras_sparse as ks
from conftest import layer_grads
from keras_sparse import testing

# class name -> (init kwargs, input shape); None = integer ids for Embedding.
LAYERS = {
    "SparseDense": ({"units": 4}, (2, 8)),
    "SparseConv1D": ({"filters": 4, "kernel_size": 3}, (2, 8, 4)),
    "SparseConv2D": ({"filters": 4, "kernel_size": 3, "strides": 2}, (2, 7, 7, 4)),
    "SparseConv3D": ({"filters": 4, "kernel_size": 2}, (2, 4, 4, 4, 4)),
    "SparseConv1DTranspose": ({"filters": 4, "kernel_size": 3}, (2, 5, 4)),
    "SparseConv2DTranspose": ({"filters": 4, "kernel_size": 3, "strides": 2}, (2, 4, 4, 4)),
    "SparseConv3DTranspose": ({"filters": 4, "kernel_size": 2}, (2, 3, 3, 3, 4)),
    "SparseDepthwiseConv1D": ({"kernel_size": 3, "depth_multiplier": 2}, (2, 8, 4)),
    "SparseDepthwiseConv2D": ({"kernel_size": 3}, (2, 6, 6, 4)),
    "SparseSeparableConv1D": ({"filters": 4, "kernel_size": 3}, (2, 8, 4)),
    "SparseSeparableConv2D": ({"filters": 4, "kernel_size": 3, "depth_multiplier": 2}, (2, 6, 6, 4)),
    "SparseEinsumDense": ({"equation": "abc,cd->abd", "output_shape": (3, 4), "bias_axes": "d"}, (2, 3, 8)),
    "SparseEmbedding": ({"input_dim": 10, "output_dim": 4}, None),
}
NAMES = sorted(LAYERS)
KERAS_PARENT = {cls: parent for parent, cls in ks.layers.SPARSE_CLASS_FOR.items()}


def _numpy(x):
    return ops.convert_to_numpy(x)


def _assert_identical(a, b):
    a, b = _numpy(a), _numpy(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), np.max(np.abs(a - b))


def _input(name):
    shape = LAYERS[name][1]
    if shape is None:
        return np.array([[0, 3, 9, 3, 1], [2, 2, 7, 0, 5]], dtype="int32")
    return np.random.default_rng(0).standard_normal(shape).astype("float32")


def _built(name, **extra):
    """A built sparse layer with random trainable weights (masked unless
    ``masked=False`` is given)."""
    extra.setdefault("masked", True)
    layer = getattr(ks.layers, name)(**LAYERS[name][0], **extra)
    layer.build(_input(name).shape)
    rng = np.random.default_rng(1)
    for variable in layer.trainable_weights:
        variable.assign(rng.standard_normal(variable.shape).astype("float32"))
    return layer


def _masks(layer):
    return {name: _numpy(layer.get_mask(name)) for name in layer.sparse_weight_names}



# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("pruned", [False, True], ids=["all-ones", "pruned"])
@pytest.mark.parametrize("name", NAMES)
def test_parity_with_keras_parent(name, pruned):
    sparse = _built(name)
    if pruned:
        sparse.prune_to(0.5)
    parent = KERAS_PARENT[type(sparse)](**LAYERS[name][0])
    x = _input(name)
    parent.build(x.shape)
    parent.set_weights(sparse.stripped_weights())
    if not pruned:
        assert all(m.all() for m in _masks(sparse).values())
        latent = [w for w in sparse.weights if w.dtype != "bool"]
        for ours, theirs in zip(latent, parent.weights):
            _assert_identical(ours, theirs)

    out = sparse(x)
    _assert_identical(out, parent(x))
    cotangent = np.random.default_rng(2).standard_normal(out.shape).astype("float32")
    sparse_grad_x, sparse_grads = layer_grads(sparse, x, cotangent)
    parent_grad_x, parent_grads = layer_grads(parent, x, cotangent)
    if sparse_grad_x is not None:
        _assert_identical(sparse_grad_x, parent_grad_x)
    assert len(sparse_grads) == len(parent_grads)
    # Forward-only mask: the latent gradient is the parent's where the mask
    # keeps, exactly 0 (a select, so +0.0) where it prunes.
    mask_of = {
        id(sparse.latent_weight(n)): m for n, m in _masks(sparse).items()
    }
    for variable, ours, theirs in zip(sparse.trainable_variables, sparse_grads, parent_grads):
        mask = mask_of.get(id(variable), np.ones(variable.shape, bool))
        _assert_identical(ours, np.where(mask, _numpy(theirs), np.float32(0.0)))


# --------------------------------------------------------------- signature
SPARSE_DEFAULTS = {
    "schedule": None,
    "pattern": "unstructured",
    "scorer": "magnitude",
    "global_pruning": False,
    "method": None,
    "kernel_quantizer": None,
    "input_quantizer": None,
    "masked": None,
    "gate": None,
}


@pytest.mark.parametrize("name", NAMES)
def test_signature_matches_keras_parent(name):
    cls = getattr(ks.layers, name)
    ours = inspect.signature(cls).parameters
    theirs = inspect.signature(KERAS_PARENT[cls].__init__).parameters
    for param in list(theirs.values())[1:]:
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        assert param.name in ours, param.name
        assert ours[param.name].default == param.default, param.name
        assert ours[param.name].kind == param.kind, param.name
    for arg, default in SPARSE_DEFAULTS.items():
        assert ours[arg].default == default
    assert [p for p in ours if p not in SPARSE_DEFAULTS][: len(theirs) - 1] == [
        p for p in theirs if p != "self"
    ][: len(theirs) - 1]


def test_positional_arguments_reach_the_keras_parent():
    sparse = ks.layers.SparseConv2D(4, (3, 3), (2, 2), "same", activation="relu")
    parent = keras.layers.Conv2D(4, (3, 3), (2, 2), "same", activation="relu")
    ours, theirs = sparse.plain_config(), parent.get_config()
    ours.pop("name"), theirs.pop("name")
    assert ours == theirs


# -------------------------------------------------------------------- masks
@pytest.mark.parametrize("name", NAMES)
def test_prune_to_masks_effective_and_latent_weights(name):
    layer = _built(name)
    latent_before = {n: _numpy(layer.latent_weight(n)) for n in layer.sparse_weight_names}
    layer.prune_to(0.5)
    total = removed = 0
    for weight, mask in _masks(layer).items():
        assert mask.dtype == np.bool_ and mask.shape == latent_before[weight].shape
        effective = _numpy(layer.effective_weight(weight))
        latent = _numpy(layer.latent_weight(weight))
        assert not effective[~mask].any() and not latent[~mask].any()
        np.testing.assert_array_equal(effective[mask], latent_before[weight][mask])
        np.testing.assert_array_equal(latent[mask], latent_before[weight][mask])
        # magnitude scorer: every kept weight is at least as large as every removed one
        kept, dropped = np.abs(latent_before[weight][mask]), np.abs(latent_before[weight][~mask])
        assert kept.min() >= dropped.max()
        total += mask.size
        removed += int((~mask).sum())
        assert abs(layer.weight_sparsity(weight) - (~mask).mean()) < 1e-9
    assert abs(layer.sparsity - removed / total) < 1e-9
    assert abs(removed / total - 0.5) <= len(latent_before) / total


@pytest.mark.parametrize("name", NAMES)
def test_mask_is_bool_one_byte_per_weight(name):
    layer = _built(name)
    assert layer.non_trainable_weights == [layer.get_mask(n) for n in layer.sparse_weight_names]
    mask_bytes = weights = 0
    for weight in layer.sparse_weight_names:
        mask = layer.get_mask(weight)
        assert mask.dtype == "bool" and not mask.trainable
        mask_bytes += _numpy(mask).nbytes
        weights += int(np.prod(layer.latent_weight(weight).shape))
    assert mask_bytes <= weights


@pytest.mark.parametrize("name", NAMES)
def test_set_mask_zeroes_latent_weight(name):
    layer = _built(name)
    rng = np.random.default_rng(3)
    for weight in layer.sparse_weight_names:
        before = _numpy(layer.latent_weight(weight))
        mask = rng.random(before.shape) < 0.3
        layer.set_mask(weight, mask)
        np.testing.assert_array_equal(_numpy(layer.get_mask(weight)), mask)
        # The writer selects too: a NaN/Inf stored at a pruned position becomes 0.
        _assert_identical(layer.latent_weight(weight), np.where(mask, before, np.float32(0.0)))
        # A select: pruned entries are +0.0 whatever the stored sign of zero.
        _assert_identical(layer.effective_weight(weight), np.where(mask, before, np.float32(0.0)))
        assert layer.weight_sparsity(weight) == pytest.approx((~mask).mean())
        with pytest.raises(ValueError, match="does not match"):
            layer.set_mask(weight, np.ones(before.shape + (1,), bool))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), density=st.floats(0.0, 1.0))
def test_set_mask_invariants(seed, density):
    layer = ks.layers.SparseDense(5, masked=True)
    layer.build((None, 6))
    rng = np.random.default_rng(seed)
    layer.latent_weight("kernel").assign(rng.standard_normal((6, 5)).astype("float32"))
    mask = rng.random((6, 5)) < density
    layer.set_mask("kernel", mask)
    effective = _numpy(layer.kernel)
    assert np.count_nonzero(effective) <= mask.sum()
    assert not _numpy(layer.latent_weight("kernel"))[~mask].any()
    assert layer.sparsity == pytest.approx(1.0 - mask.mean())
    # a second set_mask with a superset mask cannot revive removed weights
    layer.set_mask("kernel", np.ones((6, 5), bool))
    assert not _numpy(layer.kernel)[~mask].any()


# -------------------------------------------------------- user-defined layer
@keras.saving.register_keras_serializable(package="test_layers")
class MyLayer(ks.layers.SparseMixin, keras.layers.Layer):
    """A user's layer opting in; build ends with ``super().build``."""

    sparse_weight_layouts = {"kernel": ks.layers.Layout((-2,), (-1,))}

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel"
        )
        super().build(input_shape)

    def call(self, inputs):
        return ops.matmul(inputs, self.kernel)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="test_layers")
class MyPlainBuildLayer(MyLayer):
    """The same layer written the usual Keras 3 way: no ``super().build``."""

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel"
        )


def test_user_layer_masks_work():
    layer = MyLayer(3, masked=True)
    x = np.random.default_rng(0).standard_normal((2, 6)).astype("float32")
    layer(x)
    assert [w.path.split("/")[-1] for w in layer.weights] == ["kernel", "kernel_mask"]
    latent = _numpy(layer.latent_weight("kernel"))
    layer.prune_to(0.5)
    mask = _numpy(layer.get_mask("kernel"))
    assert mask.dtype == np.bool_ and (~mask).sum() == 9
    np.testing.assert_allclose(_numpy(layer(x)), x @ (latent * mask), rtol=1e-6, atol=1e-6)


def test_user_layer_contract():
    testing.run_layer_test(
        MyLayer,
        {"units": 3},
        input_shape=(2, 6),
        expected_output_shape=(2, 3),
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=1,
    )


def test_user_layer_without_super_build_gets_masks():
    layer = MyPlainBuildLayer(3, masked=True)
    layer(np.ones((2, 6), "float32"))
    layer.prune_to(0.5)
    assert (~_numpy(layer.get_mask("kernel"))).sum() == 9


# --------------------------------------------------------------------- LoRA
def test_lora_dense_gets_mask_and_lora_update_is_masked():
    layer = ks.layers.SparseDense(4, lora_rank=2, masked=True)
    layer.build((None, 8))
    assert layer.lora_enabled
    assert [w.path.split("/")[-1] for w in layer.non_trainable_weights] == ["kernel", "kernel_mask"]
    with pytest.raises(ValueError):  # Keras' lock is restored after the mask is added
        layer.add_weight(shape=(1,), name="late")
    rng = np.random.default_rng(0)
    layer.lora_kernel_b.assign(rng.standard_normal((2, 4)).astype("float32"))
    layer.prune_to(0.5)
    mask = _numpy(layer.kernel_mask)
    assert (~mask).sum() == 16
    scale = layer.lora_alpha / layer.lora_rank
    update = _numpy(layer.lora_kernel_a) @ _numpy(layer.lora_kernel_b) * scale
    merged = _numpy(layer.latent_weight("kernel")) + update
    effective = _numpy(layer.kernel)
    assert np.abs(update[~mask]).min() > 0  # the update alone would un-prune
    assert not effective[~mask].any()
    np.testing.assert_allclose(effective, merged * mask, rtol=1e-6, atol=1e-6)
    x = rng.standard_normal((3, 8)).astype("float32")
    np.testing.assert_allclose(_numpy(layer(x)), x @ (merged * mask), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_lora_training_keeps_pruned_positions_zero():
    layer = ks.layers.SparseDense(4, lora_rank=2, masked=True)
    model = keras.Sequential([keras.Input((8,)), layer])
    layer.prune_to(0.5)
    mask = _numpy(layer.kernel_mask)
    kernel = _numpy(layer.latent_weight("kernel"))
    rng = np.random.default_rng(0)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(rng.standard_normal((32, 8)), rng.standard_normal((32, 4)), epochs=3, verbose=0)
    assert np.abs(_numpy(layer.lora_kernel_b)).max() > 0
    _assert_identical(layer.latent_weight("kernel"), kernel)  # frozen by LoRA
    effective = _numpy(layer.kernel)
    assert not effective[~mask].any()
    assert np.count_nonzero(effective[mask]) == mask.sum()


def test_lora_enabled_after_build_is_masked():
    layer = ks.layers.SparseDense(4, masked=True)
    layer.build((None, 8))
    layer.prune_to(0.5)
    layer.enable_lora(2)
    layer.lora_kernel_b.assign(np.ones((2, 4), "float32"))
    assert not _numpy(layer.kernel)[~_numpy(layer.kernel_mask)].any()


# ---------------------------------------------------------------- bad input
def test_nm_pattern_needs_divisible_input_dim():
    layer = ks.layers.SparseDense(4, pattern="2:4")
    with pytest.raises(ValueError, match="must divide the input dimension 6"):
        layer.build((None, 6))
    ks.layers.SparseDense(4, pattern="2:4").build((None, 8))


@pytest.mark.parametrize("name", ["SparseDepthwiseConv1D", "SparseDepthwiseConv2D"])
def test_nm_pattern_rejected_on_depthwise(name):
    # The kernel has no input axis whatever the input: rejected when the
    # layer is made, not when it is built.
    with pytest.raises(ValueError, match="N:M sparsity needs an input axis"):
        getattr(ks.layers, name)(**LAYERS[name][0], pattern=ks.patterns.NByM(2, 4))


def test_nm_pattern_rejected_on_built_depthwise_and_state_kept():
    layer = _built("SparseDepthwiseConv2D")
    with pytest.raises(ValueError, match="needs an input axis"):
        layer.configure_pruning(pattern="2:4")
    assert layer.pattern == ks.patterns.Unstructured()


@pytest.mark.parametrize("pattern", ["bogus", "2:x", "nm_2,4", 3])
def test_unknown_pattern_rejected(pattern):
    with pytest.raises(ValueError, match="pattern"):
        ks.layers.SparseDense(4, pattern=pattern)


# ---------------------------------------------------------- missing callback
def _scheduled_model():
    layer = ks.layers.SparseDense(4, schedule=ks.schedules.ConstantSparsity(0.5, frequency=1))
    model = keras.Sequential([keras.Input((8,)), layer])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((16, 8)).astype("float32"), rng.standard_normal((16, 4)).astype("float32")
    return model, layer, data


@pytest.mark.slow
def test_fit_without_pruning_callback_warns():
    model, layer, (x, y) = _scheduled_model()
    with pytest.warns(UserWarning, match=r"ks\.callbacks\.Pruning\(\)"):
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert layer.sparsity == 0.0


@pytest.mark.slow
def test_fit_with_pruning_callback_does_not_warn():
    model, layer, (x, y) = _scheduled_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[ks.callbacks.Pruning()])
    assert not [w for w in caught if "Pruning()" in str(w.message)]
    assert layer.sparsity == 0.5


# ---------------------------------------------------------------------- XLA
@pytest.mark.slow
def test_xla_fit_with_sparse_layers():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:256, :, :, None] / 16.0).astype("float32")
    y = digits.target[:256]
    schedule = ks.schedules.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=6, frequency=2)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            ks.layers.SparseConv2D(8, 3, activation="relu", schedule=schedule),
            ks.layers.SparseSeparableConv2D(8, 3, activation="relu", schedule=schedule),
            keras.layers.Flatten(),
            ks.layers.SparseDense(10, schedule=schedule),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    history = model.fit(
        x, y, batch_size=64, epochs=3, verbose=0, callbacks=[ks.callbacks.Pruning()]
    )
    assert model.jit_compile is True
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    for layer in model.layers:
        if not isinstance(layer, ks.layers.SparseMixin):
            continue
        assert layer.sparsity == pytest.approx(0.75, abs=0.02)
        for name, mask in _masks(layer).items():
            assert not _numpy(layer.effective_weight(name))[~mask].any()


@pytest.mark.slow
def test_latent_weights_stay_zero_after_fit_with_adam():
    layer = ks.layers.SparseDense(4, schedule=ks.schedules.OneShot(3, 0.5))
    model = keras.Sequential([keras.Input((8,)), layer])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 8)), rng.standard_normal((64, 4))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ks.callbacks.Pruning()])
    mask = _numpy(layer.kernel_mask)
    assert layer.sparsity == 0.5
    assert not _numpy(layer.kernel)[~mask].any()  # the forward pass is masked
    assert not _numpy(layer.latent_weight("kernel"))[~mask].any()  # stored weights


def test_checkpoint_written_with_a_gradient_probe_loads_without_one(tmp_path):
    x = np.random.default_rng(0).random((32, 8)).astype("float32")
    model = keras.Sequential([keras.Input((8,)), ks.layers.SparseDense(4, schedule=0.5)])
    layer = model.layers[0]
    layer.prune_to(0.5)
    layer.enable_gradient_probe()
    model.compile("adam", "mse")
    model.fit(x, x[:, :4], epochs=1, verbose=0)
    path = str(tmp_path / "probe.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert not loaded.layers[0].has_gradient_probe
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.layers[0].get_mask("kernel")),
        keras.ops.convert_to_numpy(layer.get_mask("kernel")),
    )
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
