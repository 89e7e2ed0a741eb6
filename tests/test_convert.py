"""``ks.prune`` and ``ks.strip`` on whole models: Sequential, functional,
nested and subclassed; layer selection; validation that leaves the model
untouched; stripping to plain Keras."""

import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse.layers import SparseMixin
from keras_sparse.utils import walk_layers

FEATURES = 8


# ----------------------------------------------------------------- models
def _np(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def _sequential():
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.Dense(6, activation="relu", name="d2"),
        keras.layers.Dense(4, name="d3"),
    ])


def _functional():
    inp = keras.Input((FEATURES,))
    h = keras.layers.Dense(16, activation="relu", name="d1")(inp)
    a = keras.layers.Dense(6, activation="relu", name="d2")(h)
    b = keras.layers.Dense(6, name="side")(h)
    out = keras.layers.Dense(4, name="d3")(keras.layers.Add(name="add")([a, b]))
    return keras.Model(inp, out)


def _nested():
    inner = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.Dense(6, activation="relu", name="d2"),
    ], name="inner")
    inp = keras.Input((FEATURES,))
    out = keras.layers.Dense(4, name="d3")(inner(inp))
    return keras.Model(inp, out)


class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d1 = keras.layers.Dense(16, activation="relu", name="d1")
        self.d2 = keras.layers.Dense(6, activation="relu", name="d2")
        self.d3 = keras.layers.Dense(4, name="d3")

    def call(self, x):
        return self.d3(self.d2(self.d1(x)))


def _subclassed(built=True):
    model = Net()
    if built:
        model(np.zeros((1, FEATURES), "float32"))
    return model


BUILDERS = {
    "sequential": _sequential,
    "functional": _functional,
    "nested": _nested,
    "subclassed": _subclassed,
    "subclassed_unbuilt": lambda: _subclassed(built=False),
}
DENSE_NAMES = {"d1", "d2", "d3"}


def _make(kind, seed=0):
    keras.utils.set_random_seed(seed)
    return BUILDERS[kind]()


def _x(n=32, seed=0):
    return np.random.RandomState(seed).randn(n, FEATURES).astype("float32")


def _y(n=32, seed=1):
    return np.random.RandomState(seed).randint(0, 4, size=n)


def _leaves(model):
    return [layer for layer in walk_layers(model) if not isinstance(layer, keras.Model)]


def _by_name(model):
    return {layer.name: layer for layer in _leaves(model)}


def _snapshot(model):
    """Classes, variable count and values of every layer (to prove a model
    was not touched)."""
    return {
        "classes": [(layer.name, type(layer)) for layer in _leaves(model)],
        "count": len(model.variables),
        "values": [_np(v).copy() for v in model.variables],
        "mask_attrs": [
            name for layer in _leaves(model) for name in vars(layer) if name.endswith("_mask")
        ],
    }


def _assert_untouched(model, snapshot):
    now = _snapshot(model)
    assert now["classes"] == snapshot["classes"]
    assert now["count"] == snapshot["count"]
    assert now["mask_attrs"] == snapshot["mask_attrs"]
    for a, b in zip(now["values"], snapshot["values"]):
        np.testing.assert_array_equal(a, b)


def _compile_fit(model, epochs=1, callbacks=None):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model.fit(_x(), _y(), batch_size=8, epochs=epochs, shuffle=False, verbose=0,
                     callbacks=[ks.callbacks.Pruning()] + list(callbacks or []))


# ------------------------------------------------------------- conversion
@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_prune_every_model_kind(kind):
    model = _make(kind)
    x = _x()
    built = model.built
    before = _np(model.predict(x, verbose=0)) if built else None
    original = _snapshot(model) if built else None

    pruned = ks.prune(model, 0.5)

    subclassed = kind.startswith("subclassed")
    assert (pruned is model) == subclassed
    layers = _by_name(pruned)
    for name in DENSE_NAMES:
        assert isinstance(layers[name], ks.layers.SparseDense), name
        assert isinstance(layers[name], keras.layers.Dense)
        assert layers[name].schedule.target_sparsity == 0.5
    if built:
        for name in DENSE_NAMES:
            mask = _np(layers[name].get_mask("kernel"))
            assert mask.dtype == bool and mask.all()
        n_sparse = sum(isinstance(l, SparseMixin) for l in _leaves(pruned))
        assert n_sparse == len([l for l in _leaves(model) if isinstance(l, keras.layers.Dense)])
        assert len(pruned.variables) == original["count"] + n_sparse
        # All-ones masks: the converted model computes the same function.
        np.testing.assert_allclose(_np(pruned.predict(x, verbose=0)), before,
                                   rtol=1e-6, atol=1e-6)
        if not subclassed:
            for name in DENSE_NAMES:
                np.testing.assert_array_equal(
                    _np(layers[name].latent_weight("kernel")),
                    _np(_by_name(model)[name].kernel),
                )

    _compile_fit(pruned)

    for name in DENSE_NAMES:
        layer = layers[name]
        mask = _np(layer.get_mask("kernel"))
        assert (~mask).sum() == round(0.5 * mask.size), name
        # Plain SGD: a masked entry has zero gradient, so it stays zero.
        assert np.all(_np(layer.latent_weight("kernel"))[~mask] == 0.0), name
    if built and not subclassed:
        _assert_untouched(model, original)  # the input model is not modified


@pytest.mark.slow
def test_functional_input_model_unchanged_after_training_the_pruned_copy():
    model = _make("nested")
    snapshot = _snapshot(model)
    pruned = ks.prune(model, 0.75)
    _compile_fit(pruned)
    _assert_untouched(model, snapshot)
    assert not any(isinstance(layer, SparseMixin) for layer in _leaves(model))
    # The pruned copy owns separate variables.
    assert not {id(v) for v in pruned.variables} & {id(v) for v in model.variables}


@pytest.mark.slow
def test_prune_subclassed_model_after_training():
    model = _make("subclassed")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="sgd", loss=loss)
    model.fit(_x(), _y(), epochs=1, batch_size=8, verbose=0)  # caches the step function

    ks.prune(model, 0.5)
    _compile_fit(model)  # compiled again, as documented

    x = _x()
    hidden = x
    for layer in (model.d1, model.d2):
        kernel = _np(layer.latent_weight("kernel")) * _np(layer.get_mask("kernel"))
        hidden = np.maximum(hidden @ kernel + _np(layer.bias), 0.0)
        assert layer.sparsity == 0.5
    np.testing.assert_allclose(_np(model.d2(model.d1(x))), hidden, rtol=1e-5, atol=1e-5)


def _sparse_names(model):
    return {layer.name for layer in _leaves(model) if isinstance(layer, SparseMixin)}


@pytest.mark.parametrize(
    "layers, expected",
    [
        ("d2", {"d2"}),
        ("d[13]", {"d1", "d3"}),
        (["d1", "side"], {"d1", "side"}),
        (lambda layer: getattr(layer, "units", 0) == 6, {"d2", "side"}),
        ({"d1": 0.25, "d3": 0.5}, {"d1", "d3"}),
    ],
    ids=["name", "regex", "list", "callable", "dict"],
)
@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_layer_selection(kind, layers, expected):
    model = _make(kind)
    if kind == "subclassed":
        expected = expected - {"side"}
        if not expected:
            pytest.skip("the subclassed model has no 'side' layer")
        if isinstance(layers, list):
            layers = [n for n in layers if n != "side"]
    pruned = ks.prune(model, 0.5, layers=layers)
    assert _sparse_names(pruned) == expected
    for name, layer in _by_name(pruned).items():
        if name in expected:
            target = layers[name] if isinstance(layers, dict) else 0.5
            assert layer.schedule.target_sparsity == target
        elif isinstance(layer, keras.layers.Dense):
            assert type(layer) is keras.layers.Dense
            assert not hasattr(layer, "kernel_mask")


def test_dict_distribution_only_listed_layers():
    model = _make("functional")
    count = len(model.variables)
    pruned = ks.prune(model, distribution={"d2": 0.5, "side": 0.75})
    assert _sparse_names(pruned) == {"d2", "side"}
    layers = _by_name(pruned)
    assert layers["d2"].schedule.target_sparsity == 0.5
    assert layers["side"].schedule.target_sparsity == 0.75
    assert len(pruned.variables) == count + 2
    for name in ("d1", "d3"):
        assert type(layers[name]) is keras.layers.Dense


# ----------------------------------------------------- unsupported layers
def _lstm_model():
    inp = keras.Input((5, 3))
    h = keras.layers.LSTM(8, name="my_lstm")(inp)
    out = keras.layers.Dense(4, name="head")(h)
    return keras.Model(inp, out)


def _mha_model():
    inp = keras.Input((5, 8))
    h = keras.layers.MultiHeadAttention(2, 4, name="my_mha")(inp, inp)
    out = keras.layers.Dense(4, name="head")(h)
    return keras.Model(inp, out)


@pytest.mark.parametrize("builder, name", [(_lstm_model, "my_lstm"), (_mha_model, "my_mha")])
def test_unsupported_layer_warns_once_or_raises_in_strict_mode(builder, name):
    model = builder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = ks.prune(model, 0.5)
    user = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(user) == 1
    assert name in str(user[0].message)
    assert _sparse_names(pruned) == {"head"}
    x = np.random.RandomState(0).randn(2, 5, model.inputs[0].shape[-1]).astype("float32")
    np.testing.assert_allclose(_np(pruned.predict(x, verbose=0)),
                               _np(model.predict(x, verbose=0)), rtol=1e-6, atol=1e-6)

    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=name):
        ks.prune(model, 0.5, strict=True)
    _assert_untouched(model, snapshot)
    # Selecting only supported layers is fine in strict mode.
    assert _sparse_names(ks.prune(model, 0.5, layers="head", strict=True)) == {"head"}


# ----------------------------------------------------------- bad arguments
BAD_ARGUMENTS = [
    (dict(sparsity=1.0), r"sparsity=1\.0"),
    (dict(sparsity=-0.1), r"sparsity=-0\.1"),
    (dict(sparsity=0.5, pattern="3:2"), r"pattern=.3:2. \(n=3, m=2\)"),
    # d1 (8, 16) is fine; d2 (16, 6) is not: validation must finish first.
    (dict(sparsity=0.5, pattern=ks.patterns.Block((4, 4))), r"block_shape=\(4, 4\)"),
    # d1 and d2 take 8 and 16 inputs; d3 takes 6, which 4 does not divide.
    (dict(sparsity=0.5, pattern="2:4"), r"m=4"),
    (dict(sparsity=0.5, layers="no_such_layer"), r"layers='no_such_layer'"),
    (dict(sparsity=0.5, layers=["d1", "nope"]), r"nope"),
    (dict(sparsity=0.5, distribution="bogus"), r"distribution='bogus'"),
    (dict(sparsity=0.5, distribution={"d1": 1.5}), r"1\.5"),
    (dict(sparsity=0.5, pattern="2:4", distribution="global"), r"pattern"),
    (dict(sparsity=0.5, schedule="nope"), r"schedule='nope'"),
    (dict(), r"sparsity"),
]


@pytest.mark.parametrize("kind", ["sequential", "nested", "subclassed"])
@pytest.mark.parametrize(
    "kwargs, message", BAD_ARGUMENTS, ids=[str(i) for i in range(len(BAD_ARGUMENTS))]
)
def test_bad_arguments_raise_and_leave_model_untouched(kind, kwargs, message):
    model = _make(kind)
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        ks.prune(model, **kwargs)
    _assert_untouched(model, snapshot)


def test_bad_arguments_leave_pruned_subclassed_model_configuration():
    model = ks.prune(_make("subclassed"), 0.5)
    schedules = {layer.name: layer.schedule for layer in _leaves(model)}
    with pytest.raises(ValueError, match=r"block_shape"):
        ks.prune(model, 0.9, pattern=ks.patterns.Block((4, 4)))
    for layer in _leaves(model):
        assert layer.schedule == schedules[layer.name]
        assert layer.pattern == ks.patterns.Unstructured()


# ---------------------------------------------------------- pruning twice
@pytest.mark.parametrize("kind", ["sequential", "nested", "subclassed"])
def test_pruning_a_pruned_model_reconfigures(kind):
    model = _make(kind)
    dense_count = len(model.variables)
    once = ks.prune(model, 0.5)
    for layer in _leaves(once):
        if isinstance(layer, SparseMixin):
            layer.prune_to(0.5)
    masks = {layer.name: _np(layer.get_mask("kernel")) for layer in _leaves(once)
             if isinstance(layer, SparseMixin)}
    new_schedule = ks.schedules.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=10)
    twice = ks.prune(once, 0.8, schedule=new_schedule)

    assert len(twice.variables) == dense_count + len(DENSE_NAMES)
    layers = _by_name(twice)
    for name in DENSE_NAMES:
        layer = layers[name]
        assert type(layer) is ks.layers.SparseDense
        assert isinstance(layer.schedule, ks.schedules.PolynomialDecay)
        assert layer.schedule.target_sparsity == 0.8
        assert layer.schedule.end_step == 10
        # The current masks are carried over, not reset.
        np.testing.assert_array_equal(_np(layer.get_mask("kernel")), masks[name])
        assert sum(1 for v in layer.variables if v.path.endswith("kernel_mask")) == 1


# ------------------------------------------------------------------- strip
def _pruned_model(kind, sparsity=0.6):
    model = ks.prune(_make(kind), sparsity)
    for layer in _leaves(model):
        if isinstance(layer, SparseMixin):
            layer.prune_to(sparsity)
    return model


def _assert_plain(model):
    for layer in [model] + walk_layers(model):
        if isinstance(layer, Net):
            continue
        assert type(layer).__module__.startswith("keras."), type(layer)
        assert not isinstance(layer, SparseMixin)


@pytest.mark.parametrize("kind", ["sequential", "functional", "nested"])
def test_strip_graph_models(kind):
    pruned = _pruned_model(kind)
    x = _x()
    expected = _np(pruned.predict(x, verbose=0))
    count = len(pruned.variables)
    n_sparse = sum(isinstance(l, SparseMixin) for l in _leaves(pruned))
    stripped = ks.strip(pruned)

    assert stripped is not pruned
    _assert_plain(stripped)
    assert len(stripped.variables) == count - n_sparse
    sparse = _by_name(pruned)
    for name, layer in _by_name(stripped).items():
        if name in DENSE_NAMES:
            kernel = _np(layer.kernel)
            mask = _np(sparse[name].get_mask("kernel"))
            np.testing.assert_array_equal(kernel, _np(sparse[name].kernel))
            assert np.all(kernel[~mask] == 0.0)
            assert np.count_nonzero(kernel) == mask.sum()
    np.testing.assert_allclose(_np(stripped.predict(x, verbose=0)), expected,
                               rtol=1e-6, atol=1e-6)
    # The sparse model is left as it was.
    assert all(isinstance(sparse[name], ks.layers.SparseDense) for name in DENSE_NAMES)


def _modules_and_classes(config):
    modules, classes = set(), set()

    def visit(node):
        if isinstance(node, dict):
            if isinstance(node.get("module"), str):
                modules.add(node["module"])
            if isinstance(node.get("class_name"), str):
                classes.add(node["class_name"])
            if isinstance(node.get("registered_name"), str):
                assert not node["registered_name"].startswith("keras_sparse")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return modules, classes


@pytest.mark.slow
def test_stripped_model_loads_without_keras_sparse(tmp_path):
    pruned = _pruned_model("functional", 0.75)
    _compile_fit(pruned)
    x = _x()
    stripped = ks.strip(pruned)
    path = tmp_path / "plain.keras"
    stripped.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", _np(pruned.predict(x, verbose=0)))
    zeros = sum(int((~_np(l.get_mask("kernel"))).sum()) for l in _leaves(pruned)
                if isinstance(l, SparseMixin))

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    modules, classes = _modules_and_classes(config)
    assert modules and all(m.split(".")[0] == "keras" for m in modules), modules
    assert not any(c.startswith("SparseD") for c in classes), classes

    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import keras
        model = keras.saving.load_model({str(path)!r})
        assert "keras_sparse" not in sys.modules, "keras_sparse was imported"
        x = np.load({str(tmp_path / "x.npy")!r})
        expected = np.load({str(tmp_path / "y.npy")!r})
        got = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        zeros = sum(int((keras.ops.convert_to_numpy(l.kernel) == 0).sum())
                    for l in model.layers if hasattr(l, "kernel"))
        print("ZEROS", zeros)
    """)
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ZEROS {zeros}" in result.stdout


@pytest.mark.slow
def test_strip_subclassed_in_place():
    model = _pruned_model("subclassed")
    _compile_fit(model)
    x = _x()
    expected = _np(model.predict(x, verbose=0))
    masks = {l.name: _np(l.get_mask("kernel")) for l in _leaves(model)}
    count = len(model.variables)

    stripped = ks.strip(model)

    assert stripped is model
    _assert_plain(model)
    assert type(model.d1) is keras.layers.Dense
    assert len(model.variables) == count - len(DENSE_NAMES)
    assert not any(v.path.endswith("_mask") for v in model.variables)
    for layer in _leaves(model):
        kernel = _np(layer.kernel)
        assert np.all(kernel[~masks[layer.name]] == 0.0)
    np.testing.assert_allclose(_np(model.predict(x, verbose=0)), expected,
                               rtol=1e-6, atol=1e-6)
    # Still an ordinary trainable Keras model.
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, _y(), epochs=1, batch_size=16, verbose=0)
    assert np.any(_np(model.d1.kernel)[~masks["d1"]] != 0.0)


def test_strip_plain_model_is_a_copy():
    model = _make("sequential")
    stripped = ks.strip(model)
    assert stripped is not model
    _assert_plain(stripped)
    x = _x()
    np.testing.assert_array_equal(_np(stripped.predict(x, verbose=0)),
                                  _np(model.predict(x, verbose=0)))


def test_config_of_stripped_model_is_json():
    stripped = ks.strip(_pruned_model("nested"))
    text = json.dumps(stripped.get_config())
    assert "keras_sparse" not in text


def test_weightless_layers_keras_refuses_to_rebuild_are_reused():
    """A Lambda wrapping a Python lambda cannot be rebuilt from its config
    in safe mode; prune, quantize and strip reuse it (it has no state)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    h = keras.layers.Dense(16, name="first")(inp)
    h = keras.layers.Lambda(lambda t: t * 2.0 - 1.0, name="affine")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="last")(h))
    x = np.random.RandomState(0).rand(5, 8).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    pruned = ks.prune(model, 0.5)
    assert isinstance(pruned.get_layer("first"), ks.layers.SparseMixin)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pruned(x)), expected, rtol=1e-6)
    quantized = ks.quantize(pruned, 8)
    stripped = ks.strip(quantized)
    assert type(stripped.get_layer("first")) is keras.layers.Dense
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stripped(x)),
                               keras.ops.convert_to_numpy(quantized(x)), rtol=1e-5, atol=1e-6)
    # A layer with weights that fails to rebuild still raises.
    from keras_sparse.cloning import rebuild as _rebuild

    class Broken(keras.layers.Dense):
        @classmethod
        def from_config(cls, config):
            raise ValueError("cannot rebuild")

    broken = Broken(2)
    broken.build((None, 3))
    with pytest.raises(ValueError, match="cannot rebuild"):
        _rebuild(broken)


def test_strip_warns_naming_the_keras_sparse_layers_it_keeps():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 8))
    att = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    flat = keras.layers.Flatten()(att)
    out = keras.layers.Dense(3, name="head")(keras.layers.Dense(16, name="wide")(flat))
    model = keras.Model(inputs, out)
    # Factorized and head-masked layers have plain forms: no warning.
    factorized = ks.factorize(model, rank=2, layers=["wide"])
    heads = ks.prune_heads(model, heads={"mha": [1]})
    plain = ks.prune(model, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for converted in (factorized, heads, plain):
            assert "keras_sparse" not in json.dumps(ks.strip(converted).get_config())
    sparse_act = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4),
                                   ks.layers.TopKActivation(k=2, name="topk")])
    with pytest.warns(UserWarning, match=r"topk \(TopKActivation\)"):
        ks.strip(sparse_act)
