"""Bad inputs across the public API: every call raises the documented
exception type, its message names the argument and the bad value, and a
model handed to the call is left exactly as it was.

Also: non-model arguments to model functions (``TypeError``), the warnings
for a model with nothing to prune, and conversion that validates every
layer before it changes a subclassed model."""

import math
import os
import tempfile
import warnings
from types import SimpleNamespace

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse.layers import SparseMixin
from keras_sparse.ops import masks as mask_ops
from keras_sparse.utils import walk_layers

FEATURES = 8


# ------------------------------------------------------------------ models
def _dense_model():
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Dense(6, activation="relu", name="d2"),
        keras.layers.Dense(4, name="d3"),
    ], name="dense_model")


def _attention_model():
    inputs = keras.Input((3, FEATURES))
    hidden = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(inputs, inputs)
    outputs = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(hidden))
    return keras.Model(inputs, outputs, name="attention_model")


class SubclassedNet(keras.Model):
    """A subclassed model: ``ks.prune``/``ks.quantize`` convert it in place."""

    def __init__(self, units=(6, 9, 4), **kwargs):
        super().__init__(**kwargs)
        self.units = tuple(units)
        self.blocks = [keras.layers.Dense(u, name=f"s{i}") for i, u in enumerate(units)]

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _x(n=4):
    return np.random.default_rng(0).standard_normal((n, FEATURES)).astype("float32")


@pytest.fixture(scope="module")
def m(tmp_path_factory):
    """The models the bad calls run on, built once."""
    dense = _dense_model()
    pruned = ks.prune(_dense_model(), 0.5, layers=["d1", "d2"])
    quantized = ks.quantize(_dense_model(), 4, activations=ks.quantizers.LSQ(4, signed=False),
                            layers=["d1", "d2"])
    sub = SubclassedNet(name="sub")
    sub(_x())
    unbuilt = keras.Sequential([keras.layers.Dense(3)], name="unbuilt")
    return SimpleNamespace(
        dense=dense,
        attention=_attention_model(),
        pruned=pruned,
        quantized=quantized,
        sub=sub,
        unbuilt=unbuilt,
        x=_x(),
        y=np.zeros((4, 4), "float32"),
        scores=np.arange(24, dtype="float32").reshape(6, 4),
        path=str(tmp_path_factory.mktemp("export") / "model.kspk"),
    )


def _snapshot(model):
    """Layer classes and build state, the variables and their values, and
    the sparse settings of every layer of ``model``."""
    layers = [(type(layer).__name__, layer.name, layer.built) for layer in walk_layers(model)]
    settings = [
        (layer.name, repr(layer.schedule), repr(layer.pattern), repr(layer.scorer),
         repr(layer.kernel_quantizer), repr(layer.input_quantizer))
        for layer in walk_layers(model) if isinstance(layer, SparseMixin)
    ]
    weights = [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]
    return layers, settings, [v.path for v in model.weights], weights


def _snapshots(m):
    return {
        name: _snapshot(getattr(m, name))
        for name in ("dense", "attention", "pruned", "quantized", "sub", "unbuilt")
    }


def _assert_unchanged(before, after):
    for name in before:
        layers, settings, paths, weights = before[name]
        layers2, settings2, paths2, weights2 = after[name]
        assert layers2 == layers, f"{name}: layers changed"
        assert settings2 == settings, f"{name}: sparse settings changed"
        assert paths2 == paths, f"{name}: variables changed"
        for a, b in zip(weights, weights2):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: weights changed")


# -------------------------------------------------------------- the calls
V, T = ValueError, TypeError


def bad(case_id, fn, exc, *fragments):
    """One bad call: ``fn(m)`` raises ``exc`` whose message holds every
    fragment (the argument's name and the bad value's repr)."""
    return pytest.param(fn, exc, fragments, id=case_id)


NOT_MODELS = [None, "model", 3, keras.layers.Dense(2)]

MODEL_FUNCTIONS = {
    "prune": lambda model: ks.prune(model, 0.5),
    "prune_at_init": lambda model: ks.prune_at_init(model, None, 0.5, scorer="magnitude"),
    "apply_initial_masks": lambda model: ks.apply_initial_masks(model),
    "quantize": lambda model: ks.quantize(model, 4),
    "calibrate": lambda model: ks.calibrate(model, np.zeros((2, FEATURES), "float32")),
    "strip": lambda model: ks.strip(model),
    "report": lambda model: ks.report(model, print_fn=None),
    "export": lambda model: ks.export(model, os.path.join(tempfile.gettempdir(), "never.kspk")),
    "shrink": lambda model: ks.shrink(model),
    "factorize": lambda model: ks.factorize(model),
    "sample_columns": lambda model: ks.sample_columns(model, 0.5),
    "prune_heads": lambda model: ks.prune_heads(model, 0.5),
    "prune_channels": lambda model: ks.prune_channels(model, 0.5),
    "slimming": lambda model: ks.slimming(model, 1e-4),
    "threshold_groups": lambda model: ks.regularizers.threshold_groups(model),
    "quantized_weights": lambda model: ks.optimizers.quantized_weights(model),
    "binary_kernels": lambda model: ks.optimizers.binary_kernels(model),
}


def _not_model_cases():
    cases = []
    for name, call in MODEL_FUNCTIONS.items():
        for value in NOT_MODELS:
            label = type(value).__name__
            cases.append(bad(
                f"{name}-model={label}",
                lambda m, call=call, value=value: call(value),
                T, "model", label, repr(value)[:40],
            ))
    cases.append(bad(
        "load_exported-model=str",
        lambda m: ks.load_exported(_exported(m), model="model"), T, "model", "'model'",
    ))
    return cases


CASES = _not_model_cases() + [
    # ---------------------------------------------------- ks.prune arguments
    bad("prune-sparsity=1.0", lambda m: ks.prune(m.dense, 1.0), V, "sparsity", "1.0"),
    bad("prune-sparsity=-0.1", lambda m: ks.prune(m.dense, -0.1), V, "sparsity", "-0.1"),
    bad("prune-sparsity=str", lambda m: ks.prune(m.dense, "0.5"), V, "sparsity", "'0.5'"),
    bad("prune-sparsity=nan", lambda m: ks.prune(m.dense, float("nan")), V, "sparsity", "nan"),
    bad("prune-sparsity=None", lambda m: ks.prune(m.dense), V, "sparsity", "None"),
    bad("prune-schedule=str", lambda m: ks.prune(m.dense, 0.5, schedule="sometimes"), V,
        "schedule", "'sometimes'"),
    bad("prune-schedule=1.5", lambda m: ks.prune(m.dense, None, schedule=1.5), V,
        "schedule", "1.5"),
    bad("prune-pattern=str", lambda m: ks.prune(m.dense, 0.5, pattern="diagonal"), V,
        "pattern", "'diagonal'"),
    bad("prune-pattern=int", lambda m: ks.prune(m.dense, 0.5, pattern=4), V, "pattern", "4"),
    bad("prune-pattern=block", lambda m: ks.prune(m.dense, 0.5, pattern="block"), V,
        "pattern", "'block'"),
    bad("prune-pattern=4:2", lambda m: ks.prune(m.dense, 0.5, pattern="4:2"), V,
        "pattern", "'4:2'"),
    bad("prune-pattern=2:4-sparsity", lambda m: ks.prune(m.dense, 0.3, pattern="2:4"), V,
        "sparsity", "0.3"),
    bad("prune-pattern=2:4-shape", lambda m: ks.prune(m.dense, None, pattern="2:4"), V,
        "pattern", "NByM(n=2, m=4)", "d3", "(6, 4)"),
    bad("prune-pattern=block-shape",
        lambda m: ks.prune(m.dense, 0.5, pattern=ks.patterns.Block((3, 3))), V,
        "pattern", "Block(block_shape=(3, 3))", "(8, 16)"),
    bad("prune-pattern=fan_in-k",
        lambda m: ks.prune(m.dense, 0.5, pattern=ks.patterns.FanIn(7)), V,
        "pattern", "FanIn(k=7)", "d3", "(6, 4)"),
    bad("prune-scorer=str", lambda m: ks.prune(m.dense, 0.5, scorer="loudest"), V,
        "scorer", "'loudest'"),
    bad("prune-scorer=int", lambda m: ks.prune(m.dense, 0.5, scorer=1), V, "scorer", "1"),
    bad("prune-distribution=str", lambda m: ks.prune(m.dense, 0.5, distribution="even"), V,
        "distribution", "'even'"),
    bad("prune-distribution=int", lambda m: ks.prune(m.dense, 0.5, distribution=2), V,
        "distribution", "2"),
    bad("prune-distribution=dict-value",
        lambda m: ks.prune(m.dense, None, distribution={"d1": 1.5}), V, "d1", "1.5"),
    bad("prune-distribution=global-channel",
        lambda m: ks.prune(m.dense, 0.5, distribution="global", pattern="channel"), V,
        "pattern", "Channel()"),
    bad("prune-layers=missing", lambda m: ks.prune(m.dense, 0.5, layers="nothing"), V,
        "layers", "'nothing'"),
    bad("prune-layers=list-missing", lambda m: ks.prune(m.dense, 0.5, layers=["d1", "zz"]), V,
        "layers", "'zz'"),
    bad("prune-layers=int", lambda m: ks.prune(m.dense, 0.5, layers=3), T, "layers", "3"),
    bad("prune-layers=list-int", lambda m: ks.prune(m.dense, 0.5, layers=[1]), T,
        "layers", "[1]"),
    bad("prune-strict=str", lambda m: ks.prune(m.dense, 0.5, strict="yes"), T,
        "strict", "'yes'"),
    bad("prune-strict-unsupported",
        lambda m: ks.prune(m.attention, 0.5, strict=True), V, "strict", "mha"),
    bad("prune-method=str", lambda m: ks.prune(m.dense, 0.5, method="fastest"), V,
        "method", "'fastest'"),
    bad("prune-method=rigl-channel",
        lambda m: ks.prune(m.dense, 0.5, method="rigl", pattern="channel"), V,
        "pattern", "Channel()"),
    bad("prune-sub-sparsity", lambda m: ks.prune(m.sub, 1.5), V, "sparsity", "1.5"),
    bad("prune-sub-pattern=2:4", lambda m: ks.prune(m.sub, None, pattern="2:4"), V,
        "pattern", "NByM(n=2, m=4)", "s2", "(9, 4)"),
    bad("prune-sub-layers", lambda m: ks.prune(m.sub, 0.5, layers=["nothing"]), V,
        "layers", "'nothing'"),
    bad("prune-pruned-2:4", lambda m: ks.prune(m.pruned, None, pattern="2:4"), V,
        "pattern", "NByM(n=2, m=4)"),
    # ------------------------------------------------- ks.quantize arguments
    bad("quantize-weights=str", lambda m: ks.quantize(m.dense, "tiny"), V, "weights", "'tiny'"),
    bad("quantize-weights=0", lambda m: ks.quantize(m.dense, 0), V, "weights", "0"),
    bad("quantize-weights=9", lambda m: ks.quantize(m.dense, 9), V, "weights", "9"),
    bad("quantize-weights=2.5", lambda m: ks.quantize(m.dense, 2.5), V, "weights", "2.5"),
    bad("quantize-activations=str", lambda m: ks.quantize(m.dense, 4, activations="loud"), V,
        "activations", "'loud'"),
    bad("quantize-nothing", lambda m: ks.quantize(m.dense, None), V, "weights", "None"),
    bad("quantize-skip_first", lambda m: ks.quantize(m.dense, 4, skip_first="yes"), T,
        "skip_first", "'yes'"),
    bad("quantize-skip_last", lambda m: ks.quantize(m.dense, 4, skip_last=1), T,
        "skip_last", "1"),
    bad("quantize-strict", lambda m: ks.quantize(m.dense, 4, strict=None), T,
        "strict", "None"),
    bad("quantize-layers=missing", lambda m: ks.quantize(m.dense, 4, layers=["zz"]), V,
        "layers", "'zz'"),
    bad("quantize-layers=no-kernel", lambda m: ks.quantize(m.dense, 4, layers=["bn"]), V,
        "layers", "'bn'"),
    bad("quantize-sub-weights", lambda m: ks.quantize(m.sub, "tiny"), V, "weights", "'tiny'"),
    bad("quantize-strict-unsupported",
        lambda m: ks.quantize(m.attention, 4, strict=True), V, "strict", "mha"),
    # ------------------------------------------------ ks.calibrate arguments
    bad("calibrate-batches=0", lambda m: ks.calibrate(m.quantized, m.x, batches=0), V,
        "batches", "0"),
    bad("calibrate-batches=str", lambda m: ks.calibrate(m.quantized, m.x, batches="2"), T,
        "batches", "'2'"),
    bad("calibrate-batch_size=0", lambda m: ks.calibrate(m.quantized, m.x, batch_size=0), V,
        "batch_size", "0"),
    bad("calibrate-batch_size=float",
        lambda m: ks.calibrate(m.quantized, m.x, batch_size=2.5), T, "batch_size", "2.5"),
    bad("calibrate-data=None", lambda m: ks.calibrate(m.quantized, None), T, "data", "None"),
    bad("calibrate-data=str", lambda m: ks.calibrate(m.quantized, "inputs"), T,
        "data", "'inputs'"),
    bad("calibrate-data=empty",
        lambda m: ks.calibrate(m.quantized, np.zeros((0, FEATURES), "float32")), V,
        "data", "(0, 8)"),
    bad("calibrate-data=empty-list", lambda m: ks.calibrate(m.quantized, iter([])), V,
        "data"),
    # --------------------------------------------------- ks.strip / report
    bad("report-print_fn=str", lambda m: ks.report(m.dense, print_fn="stdout"), T,
        "print_fn", "'stdout'"),
    bad("report-print_fn=int", lambda m: ks.report(m.pruned, print_fn=1), T, "print_fn", "1"),
    # ------------------------------------------------------------- ks.export
    bad("export-unbuilt", lambda m: ks.export(m.unbuilt, m.path), V, "model", "unbuilt"),
    bad("export-path=None", lambda m: ks.export(m.dense, None), T, "path", "None"),
    bad("export-path=int", lambda m: ks.export(m.dense, 3.5), T, "path", "3.5"),
    bad("load_exported-path=None", lambda m: ks.load_exported(None), T, "path", "None"),
    bad("load_exported-model-unbuilt",
        lambda m: ks.load_exported(_exported(m), model=m.unbuilt), V, "model", "unbuilt"),
    bad("load_exported-model-mismatch",
        lambda m: ks.load_exported(_exported(m), model=m.sub), V, "model", "SubclassedNet"),
    # ------------------------------------------------------ ks.prune_at_init
    bad("prune_at_init-scorer", lambda m: ks.prune_at_init(m.dense, None, 0.5, scorer="luck"),
        V, "scorer", "'luck'"),
    bad("prune_at_init-rounds=0",
        lambda m: ks.prune_at_init(m.dense, None, 0.5, scorer="synflow", rounds=0), V,
        "rounds", "0"),
    bad("prune_at_init-rounds=float",
        lambda m: ks.prune_at_init(m.dense, None, 0.5, scorer="synflow", rounds=2.0), T,
        "rounds", "2.0"),
    bad("prune_at_init-batches=0",
        lambda m: ks.prune_at_init(m.dense, (m.x, m.y), 0.5, loss="mse", batches=0), V,
        "batches", "0"),
    bad("prune_at_init-sparsity", lambda m: ks.prune_at_init(m.dense, None, 1.5,
                                                              scorer="magnitude"), V,
        "sparsity", "1.5"),
    bad("prune_at_init-data=None", lambda m: ks.prune_at_init(m.dense, None, 0.5, loss="mse"),
        V, "data", "None"),
    bad("prune_at_init-data=str",
        lambda m: ks.prune_at_init(m.dense, "batches", 0.5, loss="mse"), T, "data", "'batches'"),
    bad("prune_at_init-loss=None", lambda m: ks.prune_at_init(m.dense, (m.x, m.y), 0.5), V,
        "loss", "None"),
    bad("prune_at_init-loss=list",
        lambda m: ks.prune_at_init(m.dense, (m.x, m.y), 0.5, loss=["mse", "mse"]), V,
        "loss", "['mse', 'mse']"),
    bad("prune_at_init-distribution",
        lambda m: ks.prune_at_init(m.dense, None, 0.5, scorer="magnitude", distribution="x"), V,
        "distribution", "'x'"),
    bad("prune_at_init-input_shape",
        lambda m: ks.prune_at_init(m.sub, None, 0.5, scorer="synflow", input_shape="8"), T,
        "input_shape", "'8'"),
    bad("prune_at_init-strict",
        lambda m: ks.prune_at_init(m.dense, None, 0.5, scorer="magnitude", strict=1), T,
        "strict", "1"),
    # ------------------------------------------------------------- ks.shrink
    bad("shrink-drop_inputs", lambda m: ks.shrink(m.pruned, drop_inputs="no"), T,
        "drop_inputs", "'no'"),
    bad("shrink-verify", lambda m: ks.shrink(m.pruned, verify=1), T, "verify", "1"),
    bad("shrink-strict", lambda m: ks.shrink(m.pruned, strict=None), T, "strict", "None"),
    bad("shrink-return_info", lambda m: ks.shrink(m.pruned, return_info="yes"), T,
        "return_info", "'yes'"),
    bad("shrink-unbuilt", lambda m: ks.shrink(m.unbuilt), V, "model", "unbuilt"),
    # ---------------------------------------------------------- ks.factorize
    bad("factorize-rank=0", lambda m: ks.factorize(m.dense, rank=0), V, "rank", "0"),
    bad("factorize-rank=str", lambda m: ks.factorize(m.dense, rank="2"), T, "rank", "'2'"),
    bad("factorize-rank=float", lambda m: ks.factorize(m.dense, rank=1.5), T, "rank", "1.5"),
    bad("factorize-rank=dict-missing", lambda m: ks.factorize(m.dense, rank={"zz": 2}), V,
        "rank", "'zz'"),
    bad("factorize-rank=dict-too-big", lambda m: ks.factorize(m.dense, rank={"d1": 8}), V,
        "rank", "8"),
    bad("factorize-energy=0", lambda m: ks.factorize(m.dense, energy=0), V, "energy", "0"),
    bad("factorize-energy=1.5", lambda m: ks.factorize(m.dense, energy=1.5), V,
        "energy", "1.5"),
    bad("factorize-energy=str", lambda m: ks.factorize(m.dense, energy="0.9"), T,
        "energy", "'0.9'"),
    bad("factorize-layers=bn", lambda m: ks.factorize(m.dense, layers=["bn"]), V,
        "layers", "'bn'"),
    bad("factorize-layers=missing", lambda m: ks.factorize(m.dense, layers="zz"), V,
        "layers", "'zz'"),
    bad("factorize-kernel_quantizer",
        lambda m: ks.factorize(m.dense, kernel_quantizer="tiny"), V, "kernel_quantizer",
        "'tiny'"),
    bad("factorize-return_info", lambda m: ks.factorize(m.dense, return_info="yes"), T,
        "return_info", "'yes'"),
    bad("factorize-subclassed", lambda m: ks.factorize(m.sub), V, "model", "SubclassedNet"),
    # ----------------------------------------------------- ks.sample_columns
    bad("sample_columns-keep=0", lambda m: ks.sample_columns(m.dense, 0), V, "keep", "0"),
    bad("sample_columns-keep=-1", lambda m: ks.sample_columns(m.dense, -1), V, "keep", "-1"),
    bad("sample_columns-keep=too-many", lambda m: ks.sample_columns(m.dense, 100), V,
        "keep", "100"),
    bad("sample_columns-keep=str", lambda m: ks.sample_columns(m.dense, "half"), T,
        "keep", "'half'"),
    bad("sample_columns-keep=dict-missing",
        lambda m: ks.sample_columns(m.dense, {"zz": 2}), V, "keep", "'zz'"),
    bad("sample_columns-method", lambda m: ks.sample_columns(m.dense, 0.5, method="best"), V,
        "method", "'best'"),
    bad("sample_columns-ridge=-1", lambda m: ks.sample_columns(m.dense, 0.5, ridge=-1), V,
        "ridge", "-1"),
    bad("sample_columns-ridge=str", lambda m: ks.sample_columns(m.dense, 0.5, ridge="0"), T,
        "ridge", "'0'"),
    bad("sample_columns-seed=str",
        lambda m: ks.sample_columns(m.dense, 0.5, method="random", seed="s"), T, "seed", "'s'"),
    bad("sample_columns-rank=0", lambda m: ks.sample_columns(m.dense, 0.5, rank=0), V,
        "rank", "0"),
    bad("sample_columns-layers=bn", lambda m: ks.sample_columns(m.dense, 0.5, layers=["bn"]), V,
        "layers", "'bn'"),
    bad("sample_columns-return_info",
        lambda m: ks.sample_columns(m.dense, 0.5, return_info=1), T, "return_info", "1"),
    bad("sample_columns-data=str", lambda m: ks.sample_columns(m.dense, 0.5, data="x"), T,
        "data", "'x'"),
    bad("sample_columns-subclassed", lambda m: ks.sample_columns(m.sub, 0.5), V,
        "model", "SubclassedNet"),
    # -------------------------------------------------------- ks.prune_heads
    bad("prune_heads-sparsity=1.5", lambda m: ks.prune_heads(m.attention, 1.5), V,
        "sparsity", "1.5"),
    bad("prune_heads-neither", lambda m: ks.prune_heads(m.attention), V, "sparsity", "None"),
    bad("prune_heads-both", lambda m: ks.prune_heads(m.attention, 0.5, heads={"mha": [0]}), V,
        "heads", "{'mha': [0]}"),
    bad("prune_heads-scorer", lambda m: ks.prune_heads(m.attention, 0.5, scorer="loud"), V,
        "scorer", "'loud'"),
    bad("prune_heads-heads=missing", lambda m: ks.prune_heads(m.attention, heads={"zz": [0]}),
        V, "heads", "'zz'"),
    bad("prune_heads-heads=index", lambda m: ks.prune_heads(m.attention, heads={"mha": [5]}),
        V, "heads", "5"),
    bad("prune_heads-heads=list", lambda m: ks.prune_heads(m.attention, heads=[0]), T,
        "heads", "[0]"),
    bad("prune_heads-heads=int-values",
        lambda m: ks.prune_heads(m.attention, heads={"mha": 0}), T, "heads", "{'mha': 0}"),
    bad("prune_heads-no-attention", lambda m: ks.prune_heads(m.dense, 0.5), V,
        "layers", "None"),
    bad("prune_heads-layers=missing", lambda m: ks.prune_heads(m.attention, 0.5, layers="zz"),
        V, "layers", "'zz'"),
    bad("prune_heads-subclassed", lambda m: ks.prune_heads(m.sub, 0.5), V,
        "model", "SubclassedNet"),
    # ----------------------------------------------------- ks.prune_channels
    bad("prune_channels-sparsity", lambda m: ks.prune_channels(m.dense, 1.0), V,
        "sparsity", "1.0"),
    bad("prune_channels-scorer", lambda m: ks.prune_channels(m.dense, 0.5, scorer="big"), V,
        "scorer", "'big'"),
    bad("prune_channels-layers", lambda m: ks.prune_channels(m.dense, 0.5, layers=["zz"]), V,
        "layers", "'zz'"),
    bad("prune_channels-data",
        lambda m: ks.prune_channels(m.dense, 0.5, scorer="taylor_channel", loss="mse"), V,
        "data", "NoneType"),
    bad("prune_channels-loss",
        lambda m: ks.prune_channels(m.dense, 0.5, scorer="taylor_channel", data=(m.x, m.y)), V,
        "loss", "None"),
    bad("prune_channels-bn_gamma",
        lambda m: ks.prune_channels(m.dense, 0.5, scorer="bn_gamma", layers=["d2"]), V,
        "layers", "d2"),
    # ------------------------------------------- regularizers and slimming
    bad("slimming-l=-1", lambda m: ks.slimming(m.dense, -1.0), V, "l", "-1.0"),
    bad("slimming-l=str", lambda m: ks.slimming(m.dense, "big"), V, "l", "'big'"),
    bad("threshold_groups-threshold=-1",
        lambda m: ks.regularizers.threshold_groups(m.pruned, -1.0), V, "threshold", "-1.0"),
    bad("threshold_groups-threshold=str",
        lambda m: ks.regularizers.threshold_groups(m.pruned, "0.1"), T, "threshold", "'0.1'"),
    bad("threshold_groups-groups",
        lambda m: ks.regularizers.threshold_groups(m.pruned, groups="rows"), V,
        "groups", "'rows'"),
    bad("threshold_groups-relative",
        lambda m: ks.regularizers.threshold_groups(m.pruned, relative="yes"), T,
        "relative", "'yes'"),
    bad("GroupLasso-l", lambda m: ks.regularizers.GroupLasso(l=-1), V, "l", "-1"),
    bad("GroupLasso-groups", lambda m: ks.regularizers.GroupLasso(groups="rows"), V,
        "groups", "'rows'"),
    bad("GroupLasso-epsilon", lambda m: ks.regularizers.GroupLasso(epsilon=-1.0), V,
        "epsilon", "-1.0"),
    bad("regularizers.get", lambda m: ks.regularizers.get("lasso"), V, "lasso"),
    bad("binary_kernels-none", lambda m: ks.optimizers.binary_kernels(m.dense), V,
        "model", "dense_model"),
    bad("quantized_weights-bits", lambda m: ks.optimizers.quantized_weights(m.dense, bits="1"),
        T, "bits", "'1'"),
    # --------------------------------------------------------------- layers
    bad("SparseDense-schedule", lambda m: ks.layers.SparseDense(4, schedule="often"), V,
        "schedule", "'often'"),
    bad("SparseDense-schedule=1.5", lambda m: ks.layers.SparseDense(4, schedule=1.5), V,
        "schedule", "1.5"),
    bad("SparseDense-pattern", lambda m: ks.layers.SparseDense(4, pattern="3:2"), V,
        "pattern", "'3:2'"),
    bad("SparseDense-pattern=int", lambda m: ks.layers.SparseDense(4, pattern=7), V,
        "pattern", "7"),
    bad("SparseDense-pattern=block-units",
        lambda m: ks.layers.SparseDense(4, pattern=ks.patterns.Block((1, 3))), V,
        "pattern", "Block(block_shape=(1, 3))", "(None, 4)"),
    bad("SparseDense-scorer", lambda m: ks.layers.SparseDense(4, scorer="loud"), V,
        "scorer", "'loud'"),
    bad("SparseDense-global_pruning=str",
        lambda m: ks.layers.SparseDense(4, global_pruning="yes"), T, "global_pruning", "'yes'"),
    bad("SparseDense-global_pruning-channel",
        lambda m: ks.layers.SparseDense(4, global_pruning=True, pattern="channel"), V,
        "pattern", "Channel()"),
    bad("SparseDense-masked=str", lambda m: ks.layers.SparseDense(4, masked="yes"), V,
        "masked", "'yes'"),
    bad("SparseDense-masked=False-schedule",
        lambda m: ks.layers.SparseDense(4, masked=False, schedule=0.5), V, "masked", "False"),
    bad("SparseDense-method", lambda m: ks.layers.SparseDense(4, method="dance"), V,
        "method", "'dance'"),
    bad("SparseDense-kernel_quantizer",
        lambda m: ks.layers.SparseDense(4, kernel_quantizer="tiny"), V, "kernel_quantizer",
        "'tiny'"),
    bad("SparseDense-kernel_quantizer=0",
        lambda m: ks.layers.SparseDense(4, kernel_quantizer=0), V, "kernel_quantizer", "0"),
    bad("SparseDense-input_quantizer",
        lambda m: ks.layers.SparseDense(4, input_quantizer="tiny"), V, "input_quantizer",
        "'tiny'"),
    bad("SparseEmbedding-input_quantizer",
        lambda m: ks.layers.SparseEmbedding(10, 4, input_quantizer="ste_sign"), V,
        "input_quantizer", "SteSign"),
    bad("SparseDepthwiseConv2D-pattern=2:4",
        lambda m: ks.layers.SparseDepthwiseConv2D(3, pattern="2:4"), V,
        "pattern", "NByM(n=2, m=4)"),
    bad("SparseConv2D-pattern=block-filters",
        lambda m: ks.layers.SparseConv2D(6, 3, pattern=ks.patterns.Block((1, 4))), V,
        "pattern", "Block(block_shape=(1, 4))", "(3, 3, None, 6)"),
    bad("SparseEmbedding-pattern=block",
        lambda m: ks.layers.SparseEmbedding(10, 4, pattern=ks.patterns.Block((3, 1))), V,
        "pattern", "Block(block_shape=(3, 1))", "(10, 4)"),
    bad("SparseDense-build-2:4",
        lambda m: ks.layers.SparseDense(4, pattern="2:4").build((None, 6)), V,
        "pattern", "NByM(n=2, m=4)", "(6, 4)"),
    bad("SparseDense-configure_pruning",
        lambda m: ks.layers.SparseDense(4).configure_pruning(schedule="often"), V,
        "schedule", "'often'"),
    bad("SparseDense-configure_quantization",
        lambda m: ks.layers.SparseDense(4).configure_quantization(kernel_quantizer="x"), V,
        "kernel_quantizer", "'x'"),
    bad("layer-get_mask-name", lambda m: m.pruned.get_layer("d1").get_mask("bias"), V,
        "name", "'bias'"),
    bad("layer-set_mask-name",
        lambda m: m.pruned.get_layer("d1").set_mask("kernal", np.ones((8, 16), bool)), V,
        "name", "'kernal'"),
    bad("layer-set_mask-shape",
        lambda m: m.pruned.get_layer("d1").set_mask("kernel", np.ones((3, 3), bool)), V,
        "mask", "(3, 3)", "(8, 16)"),
    bad("layer-prune_to-sparsity", lambda m: m.pruned.get_layer("d1").prune_to(1.5), V,
        "sparsity", "1.5"),
    bad("layer-compute_mask_for", lambda m: m.pruned.get_layer("d1").compute_mask_for(
        "kernel", -0.5), V, "sparsity", "-0.5"),
    bad("LowRankDense-rank=0", lambda m: ks.layers.LowRankDense(4, rank=0), V, "rank", "0"),
    bad("LowRankDense-rank=str", lambda m: ks.layers.LowRankDense(4, rank="2"), V,
        "rank", "'2'"),
    bad("LowRankDense-units", lambda m: ks.layers.LowRankDense(0, rank=2), V, "units", "0"),
    bad("LowRankDense-rank-too-big",
        lambda m: ks.layers.LowRankDense(4, rank=4).build((None, 8)), V, "rank", "4"),
    bad("LowRankConv2D-padding",
        lambda m: ks.layers.LowRankConv2D(4, 3, rank=2, padding="full"), V,
        "padding", "'full'"),
    bad("LowRankConv2D-kernel_size",
        lambda m: ks.layers.LowRankConv2D(4, 0, rank=2), V, "kernel_size", "0"),
    bad("ColumnSampledDense-keep", lambda m: ks.layers.ColumnSampledDense(4, keep=0), V,
        "keep", "0"),
    bad("ColumnSampledDense-method",
        lambda m: ks.layers.ColumnSampledDense(4, keep=2, method="best"), V, "method", "'best'"),
    bad("ColumnSampledDense-units", lambda m: ks.layers.ColumnSampledDense(-2, keep=2), V,
        "units", "-2"),
    bad("HeadMasked-set_head_mask",
        lambda m: _head_masked().set_head_mask(np.ones(3, bool)), V, "mask",
        "[True, True, True]"),
    # ------------------------------------------------------------- patterns
    bad("Block-empty", lambda m: ks.patterns.Block(()), V, "block_shape", "()"),
    bad("Block-zero", lambda m: ks.patterns.Block((0, 2)), V, "block_shape", "(0, 2)"),
    bad("Block-str", lambda m: ks.patterns.Block("4x4"), V, "block_shape", "'4x4'"),
    bad("Block-float", lambda m: ks.patterns.Block((2.5, 2)), V, "block_shape", "(2.5, 2)"),
    bad("Block-allow_empty", lambda m: ks.patterns.Block((2, 2), allow_empty="no"), V,
        "allow_empty", "'no'"),
    bad("NByM-n>m", lambda m: ks.patterns.NByM(4, 2), V, "n=4", "m=2"),
    bad("NByM-n=0", lambda m: ks.patterns.NByM(0, 4), V, "n=0", "m=4"),
    bad("NByM-float", lambda m: ks.patterns.NByM(2.0, 4), V, "n=2.0"),
    bad("NByM-str", lambda m: ks.patterns.NByM(2, "4"), V, "m='4'"),
    bad("Unstructured-allow_empty", lambda m: ks.patterns.Unstructured(allow_empty=1), V,
        "allow_empty", "1"),
    bad("Channel-allow_empty", lambda m: ks.patterns.Channel(allow_empty=None), V,
        "allow_empty", "None"),
    bad("FanIn-k=0", lambda m: ks.patterns.FanIn(0), V, "k", "0"),
    bad("FanIn-k=float", lambda m: ks.patterns.FanIn(1.5), V, "k", "1.5"),
    bad("FanIn-allow_empty", lambda m: ks.patterns.FanIn(allow_empty="x"), V,
        "allow_empty", "'x'"),
    bad("patterns.get-str", lambda m: ks.patterns.get("stripes"), V, "pattern", "'stripes'"),
    bad("patterns.get-block", lambda m: ks.patterns.get("block"), V, "pattern", "'block'"),
    bad("patterns.get-5:4", lambda m: ks.patterns.get("5:4"), V, "pattern", "'5:4'"),
    bad("patterns.get-float", lambda m: ks.patterns.get(0.5), V, "pattern", "0.5"),
    bad("patterns.get-dict", lambda m: ks.patterns.get({"class_name": "Nope", "config": {}}), V,
        "pattern", "'Nope'"),
    bad("pattern-check_weight",
        lambda m: ks.patterns.NByM(2, 4).check_weight((6, 4), ks.layers.Layout((-2,), (-1,))),
        V, "pattern", "(6, 4)"),
    # -------------------------------------------------------------- scorers
    bad("scorers.get-str", lambda m: ks.scorers.get("loud"), V, "scorer", "'loud'"),
    bad("scorers.get-int", lambda m: ks.scorers.get(3), V, "scorer", "3"),
    bad("RandomScorer-seed", lambda m: ks.scorers.RandomScorer(seed="s"), V, "seed", "'s'"),
    bad("RandomScorer-rescale", lambda m: ks.scorers.RandomScorer(rescale=1), V,
        "rescale", "1"),
    bad("BatchNormGammaScorer-bind", lambda m: ks.scorers.BatchNormGammaScorer().bind(
        keras.layers.BatchNormalization(scale=False, name="nogamma")), V,
        "batchnorm", "'nogamma'"),
    bad("BatchNormGammaScorer-batchnorm", lambda m: ks.scorers.BatchNormGammaScorer(3), T,
        "batchnorm", "3"),
    # ------------------------------------------------------------ schedules
    bad("ConstantSparsity-1.0", lambda m: ks.schedules.ConstantSparsity(1.0), V,
        "target_sparsity", "1.0"),
    bad("ConstantSparsity-str", lambda m: ks.schedules.ConstantSparsity("0.5"), V,
        "target_sparsity", "'0.5'"),
    bad("ConstantSparsity-begin_step", lambda m: ks.schedules.ConstantSparsity(0.5, -1), V,
        "begin_step", "-1"),
    bad("ConstantSparsity-begin_step=float",
        lambda m: ks.schedules.ConstantSparsity(0.5, 1.5), V, "begin_step", "1.5"),
    bad("ConstantSparsity-end_step", lambda m: ks.schedules.ConstantSparsity(0.5, 0, -2), V,
        "end_step", "-2"),
    bad("ConstantSparsity-end<begin", lambda m: ks.schedules.ConstantSparsity(0.5, 10, 5), V,
        "end_step", "5"),
    bad("ConstantSparsity-frequency", lambda m: ks.schedules.ConstantSparsity(
        0.5, frequency=0), V, "frequency", "0"),
    bad("ConstantSparsity-step_origin", lambda m: ks.schedules.ConstantSparsity(
        0.5, step_origin=2), V, "step_origin", "2"),
    bad("PolynomialDecay-initial", lambda m: ks.schedules.PolynomialDecay(1.2, 0.5), V,
        "initial_sparsity", "1.2"),
    bad("PolynomialDecay-final", lambda m: ks.schedules.PolynomialDecay(0.0, 1.0), V,
        "final_sparsity", "1.0"),
    bad("PolynomialDecay-end=begin", lambda m: ks.schedules.PolynomialDecay(0.0, 0.5, 10, 10),
        V, "end_step", "10"),
    bad("PolynomialDecay-power=0", lambda m: ks.schedules.PolynomialDecay(power=0), V,
        "power", "0"),
    bad("PolynomialDecay-power=str", lambda m: ks.schedules.PolynomialDecay(power="3"), V,
        "power", "'3'"),
    bad("PolynomialDecay-frequency", lambda m: ks.schedules.PolynomialDecay(frequency=2.5), V,
        "frequency", "2.5"),
    bad("OneShot-step", lambda m: ks.schedules.OneShot(-1), V, "step", "-1"),
    bad("OneShot-target", lambda m: ks.schedules.OneShot(0, 2.0), V, "target_sparsity", "2.0"),
    bad("schedules.get-str", lambda m: ks.schedules.get("sometimes"), V,
        "schedule", "'sometimes'"),
    bad("schedules.get-bool", lambda m: ks.schedules.get(True), V, "schedule", "True"),
    bad("schedules.get-2.0", lambda m: ks.schedules.get(2.0), V, "schedule", "2.0"),
    bad("schedules.get-list", lambda m: ks.schedules.get([0.5]), V, "schedule", "[0.5]"),
    bad("schedule-with_target", lambda m: ks.schedules.OneShot(0).with_target(1.5), V,
        "sparsity", "1.5"),
    # -------------------------------------------------------- distributions
    bad("ERK-power_scale=str", lambda m: ks.distributions.ERK(power_scale="x"), T,
        "power_scale", "'x'"),
    bad("ERK-power_scale=nan", lambda m: ks.distributions.ERK(power_scale=float("nan")), V,
        "power_scale", "nan"),
    bad("PerLayer-value", lambda m: ks.distributions.PerLayer({"d1": 1.5}), V, "d1", "1.5"),
    bad("PerLayer-list", lambda m: ks.distributions.PerLayer(["d1"]), T,
        "sparsities", "['d1']"),
    bad("PerLayer-key", lambda m: ks.distributions.PerLayer({1: 0.5}), T,
        "sparsities", "{1: 0.5}"),
    bad("distributions.get-str", lambda m: ks.distributions.get("even"), V,
        "distribution", "'even'"),
    bad("distributions.get-int", lambda m: ks.distributions.get(3), V, "distribution", "3"),
    bad("ERK-layer_sparsities", lambda m: ks.distributions.ERK().layer_sparsities(
        {"a": [(4, 4)]}, 1.5), V, "sparsity", "1.5"),
    # -------------------------------------------------------------- methods
    bad("methods.get-str", lambda m: ks.methods.get("dance"), V, "method", "'dance'"),
    bad("methods.get-int", lambda m: ks.methods.get(2), V, "method", "2"),
    bad("SET-update_freq=0", lambda m: ks.methods.SET(update_freq=0), V, "update_freq", "0"),
    bad("SET-update_freq=float", lambda m: ks.methods.SET(update_freq=10.0), V,
        "update_freq", "10.0"),
    bad("SET-drop_fraction=0", lambda m: ks.methods.SET(drop_fraction=0), V,
        "drop_fraction", "0"),
    bad("SET-drop_fraction=1.5", lambda m: ks.methods.SET(drop_fraction=1.5), V,
        "drop_fraction", "1.5"),
    bad("SET-begin_step", lambda m: ks.methods.SET(begin_step=-1), V, "begin_step", "-1"),
    bad("SET-end_step", lambda m: ks.methods.SET(begin_step=10, end_step=5), V,
        "end_step", "5"),
    bad("SET-decay", lambda m: ks.methods.SET(decay="fast"), V, "decay", "'fast'"),
    bad("SET-init_scorer", lambda m: ks.methods.SET(init_scorer="loud"), V, "scorer", "'loud'"),
    bad("SET-seed", lambda m: ks.methods.SET(seed="s"), V, "seed", "'s'"),
    bad("SET-regrow_dropped", lambda m: ks.methods.SET(regrow_dropped="no"), V,
        "regrow_dropped", "'no'"),
    bad("RigL-drop_fraction", lambda m: ks.methods.RigL(drop_fraction=-0.1), V,
        "drop_fraction", "-0.1"),
    bad("RigL-update_freq", lambda m: ks.methods.RigL(update_freq="100"), V,
        "update_freq", "'100'"),
    # ------------------------------------------------------------ callbacks
    bad("Pruning-log_per_layer", lambda m: ks.callbacks.Pruning(log_per_layer="yes"), V,
        "log_per_layer", "'yes'"),
    bad("Sparsity-method", lambda m: ks.callbacks.Sparsity(method="dance"), V,
        "method", "'dance'"),
    bad("Sparsity-log_per_layer", lambda m: ks.callbacks.Sparsity(log_per_layer=None), V,
        "log_per_layer", "None"),
    bad("callbacks.SET-update_freq", lambda m: ks.callbacks.SET(update_freq=0), V,
        "update_freq", "0"),
    bad("callbacks.SET-decay", lambda m: ks.callbacks.SET(decay=1), V, "decay", "1"),
    bad("callbacks.SET-log_per_layer", lambda m: ks.callbacks.SET(log_per_layer="no"), V,
        "log_per_layer", "'no'"),
    bad("callbacks.RigL-drop_fraction", lambda m: ks.callbacks.RigL(drop_fraction=2), V,
        "drop_fraction", "2"),
    bad("callbacks.RigL-end_step", lambda m: ks.callbacks.RigL(end_step=-5), V,
        "end_step", "-5"),
    bad("FlipRatio-update_freq", lambda m: ks.metrics.FlipRatio(update_freq="hour"), V,
        "update_freq", "'hour'"),
    bad("FlipRatio-log_per_layer", lambda m: ks.metrics.FlipRatio(log_per_layer=0), V,
        "log_per_layer", "0"),
    bad("FlipRatio-predicate", lambda m: ks.metrics.FlipRatio(predicate="ternary"), V,
        "predicate", "'ternary'"),
    # ----------------------------------------------------------- quantizers
    bad("quantizers.get-str", lambda m: ks.quantizers.get("tiny"), V, "quantizer", "'tiny'"),
    bad("quantizers.get-0", lambda m: ks.quantizers.get(0), V, "quantizer", "0"),
    bad("quantizers.get-9", lambda m: ks.quantizers.get(9), V, "quantizer", "9"),
    bad("quantizers.get-float", lambda m: ks.quantizers.get(4.0), V, "quantizer", "4.0"),
    bad("SteSign-clip", lambda m: ks.quantizers.SteSign(clip_value=-1.0), V,
        "clip_value", "-1.0"),
    bad("SteSign-clip=str", lambda m: ks.quantizers.SteSign(clip_value="1"), V,
        "clip_value", "'1'"),
    bad("SwishSign-beta", lambda m: ks.quantizers.SwishSign(beta=0), V, "beta", "0"),
    bad("MagnitudeAwareSign-clip", lambda m: ks.quantizers.MagnitudeAwareSign(clip_value=0),
        V, "clip_value", "0"),
    bad("StochasticBinary-seed", lambda m: ks.quantizers.StochasticBinary(seed=1.5), V,
        "seed", "1.5"),
    bad("SteTern-threshold", lambda m: ks.quantizers.SteTern(threshold_value=-0.1), V,
        "threshold_value", "-0.1"),
    bad("SteTern-scaled", lambda m: ks.quantizers.SteTern(scaled="yes"), V, "scaled", "'yes'"),
    bad("Uniform-bits=0", lambda m: ks.quantizers.Uniform(bits=0), V, "bits", "0"),
    bad("Uniform-bits=9", lambda m: ks.quantizers.Uniform(bits=9), V, "bits", "9"),
    bad("Uniform-bits=float", lambda m: ks.quantizers.Uniform(bits=4.0), V, "bits", "4.0"),
    bad("Uniform-symmetric-1bit", lambda m: ks.quantizers.Uniform(bits=1), V, "bits", "1"),
    bad("Uniform-per_channel", lambda m: ks.quantizers.Uniform(per_channel="yes"), V,
        "per_channel", "'yes'"),
    bad("DoReFa-mode", lambda m: ks.quantizers.DoReFa(mode="both"), V, "mode", "'both'"),
    bad("DoReFa-bits", lambda m: ks.quantizers.DoReFa(bits=-2), V, "bits", "-2"),
    bad("LSQ-bits", lambda m: ks.quantizers.LSQ(bits=1), V, "bits", "1"),
    bad("LSQ-signed", lambda m: ks.quantizers.LSQ(signed="no"), V, "signed", "'no'"),
    bad("LSQ-initial_step", lambda m: ks.quantizers.LSQ(initial_step=-0.5), V,
        "initial_step", "-0.5"),
    bad("PACT-initial_clip", lambda m: ks.quantizers.PACT(initial_clip=0), V,
        "initial_clip", "0"),
    bad("SteHeaviside-clip", lambda m: ks.quantizers.SteHeaviside(clip_value="x"), V,
        "clip_value", "'x'"),
    bad("Identity-precision", lambda m: ks.quantizers.Identity(precision=0), V,
        "precision", "0"),
    # ------------------------------------- constraints, initializers, optimizers
    bad("WeightClip-clip", lambda m: ks.constraints.WeightClip(clip_value=0), V,
        "clip_value", "0"),
    bad("WeightClip-clip=inf", lambda m: ks.constraints.WeightClip(clip_value=math.inf), V,
        "clip_value", "inf"),
    bad("SparseInitializer-sparsity",
        lambda m: ks.initializers.SparseInitializer(sparsity=1.5), V, "sparsity", "1.5"),
    bad("SparseInitializer-seed", lambda m: ks.initializers.SparseInitializer(seed=-1), V,
        "seed", "-1"),
    bad("SparseInitializer-rescale",
        lambda m: ks.initializers.SparseInitializer(rescale="no"), V, "rescale", "'no'"),
    bad("Bop-threshold", lambda m: ks.optimizers.Bop(threshold=-1.0), V, "threshold", "-1.0"),
    bad("Bop-gamma", lambda m: ks.optimizers.Bop(gamma=2.0), V, "gamma", "2.0"),
    bad("CaseOptimizer-default", lambda m: ks.optimizers.CaseOptimizer(
        ("binary", ks.optimizers.Bop()), default=3), V, "default", "3"),
    bad("CaseOptimizer-predicate", lambda m: ks.optimizers.CaseOptimizer(
        ("ternary", ks.optimizers.Bop()), default=keras.optimizers.Adam()), V,
        "predicate", "'ternary'"),
    bad("PathMatches-pattern", lambda m: ks.optimizers.PathMatches("("), V, "pattern", "'('"),
    # ------------------------------------------------------ ks.ops.masks
    bad("topk_mask-sparsity", lambda m: mask_ops.topk_mask(m.scores, 1.5), V,
        "sparsity", "1.5"),
    bad("topk_mask-sparsity=str", lambda m: mask_ops.topk_mask(m.scores, "0.5"), V,
        "sparsity", "'0.5'"),
    bad("topk_mask-allow_empty", lambda m: mask_ops.topk_mask(m.scores, 0.5, allow_empty="no"),
        T, "allow_empty", "'no'"),
    bad("global_topk_masks-sparsity",
        lambda m: mask_ops.global_topk_masks([m.scores, m.scores], -0.5), V,
        "sparsity", "-0.5"),
    bad("global_topk_masks-scores", lambda m: mask_ops.global_topk_masks(m.scores, 0.5), T,
        "scores_list"),
    bad("global_topk_masks-empty-sparsity", lambda m: mask_ops.global_topk_masks([], 1.5), V,
        "sparsity", "1.5"),
    bad("nm_mask-n>m", lambda m: mask_ops.nm_mask(m.scores, 4, 2), V, "n=4", "m=2"),
    bad("nm_mask-m-divides", lambda m: mask_ops.nm_mask(m.scores, 2, 4, axis=0), V,
        "m=4", "(6, 4)"),
    bad("nm_mask-axis", lambda m: mask_ops.nm_mask(m.scores, 1, 2, axis=5), V, "axis", "5"),
    bad("nm_mask-axis=float", lambda m: mask_ops.nm_mask(m.scores, 1, 2, axis=1.0), T,
        "axis", "1.0"),
    bad("block_mask-divides", lambda m: mask_ops.block_mask(m.scores, (4, 4), 0.5), V,
        "block_shape", "(4, 4)"),
    bad("block_mask-zero", lambda m: mask_ops.block_mask(m.scores, (0, 1), 0.5), V,
        "block_shape", "(0, 1)"),
    bad("block_mask-rank", lambda m: mask_ops.block_mask(m.scores, (1, 1, 1), 0.5), V,
        "block_shape", "(1, 1, 1)"),
    bad("block_mask-sparsity", lambda m: mask_ops.block_mask(m.scores, (2, 2), 1.0), V,
        "sparsity", "1.0"),
    bad("channel_mask-axes", lambda m: mask_ops.channel_mask(m.scores, 0.5, axes=(3,)), V,
        "axis", "3"),
    bad("channel_mask-sparsity", lambda m: mask_ops.channel_mask(m.scores, 2), V,
        "sparsity", "2"),
    bad("channel_mask-allow_empty",
        lambda m: mask_ops.channel_mask(m.scores, 0.5, allow_empty=None), T,
        "allow_empty", "None"),
    bad("check_sparsity-nan", lambda m: mask_ops.check_sparsity(float("nan")), V,
        "sparsity", "nan"),
    bad("check_sparsity-list", lambda m: mask_ops.check_sparsity([0.5]), V,
        "sparsity", "[0.5]"),
    bad("check_nm-float", lambda m: mask_ops.check_nm(1, 2.0), V, "m=2.0"),
    bad("mask_sparsity-str", lambda m: mask_ops.mask_sparsity("mask"), T, "mask", "'mask'"),
]


def _head_masked():
    layer = ks.layers.HeadMaskedMultiHeadAttention(num_heads=2, key_dim=2)
    x = np.zeros((1, 3, 4), "float32")
    layer(x, x)
    return layer


def _exported(m):
    if not os.path.exists(m.path):
        ks.export(m.dense, m.path)
    return m.path


def test_enough_bad_calls():
    assert len(CASES) >= 150


@pytest.mark.parametrize("call, exc, fragments", CASES)
def test_bad_call(m, call, exc, fragments):
    before = _snapshots(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc) as info:
            call(m)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    _assert_unchanged(before, _snapshots(m))


# ----------------------------------------------- nothing to prune: warn once
def _user_warnings(record, text):
    return [w for w in record if issubclass(w.category, UserWarning) and text in str(w.message)]


def test_prune_warns_once_when_nothing_is_selected():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.BatchNormalization(),
                              keras.layers.Activation("relu")])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pruned = ks.prune(model, 0.5)
    found = _user_warnings(record, "found no layer to prune")
    assert len(found) == 1, [str(w.message) for w in record]
    assert "layers=None" in str(found[0].message)
    assert "Dense" in str(found[0].message)
    assert [type(layer) for layer in pruned.layers] == [type(layer) for layer in model.layers]


def test_prune_warns_once_when_the_selection_has_no_supported_layer():
    model = _dense_model()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ks.prune(model, 0.5, layers=["bn"])
    found = _user_warnings(record, "found no layer to prune")
    assert len(found) == 1
    assert "layers=['bn']" in str(found[0].message)


def test_prune_does_not_warn_when_it_prunes():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ks.prune(_dense_model(), 0.5)
    assert not _user_warnings(record, "found no layer to prune")


@pytest.mark.parametrize("make_callback", [ks.callbacks.Pruning, ks.callbacks.Sparsity],
                         ids=["Pruning", "Sparsity"])
def test_callback_warns_once_without_sparse_layers(make_callback):
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    x, y = _x(8), np.zeros((8, 2), "float32")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[make_callback()])
    found = _user_warnings(record, "no sparse layer")
    assert len(found) == 1, [str(w.message) for w in record]
    assert repr(model.name) in str(found[0].message)


# ------------------------------------ validate before converting in place
def _state(model):
    return (
        [type(layer).__name__ for layer in walk_layers(model)],
        [layer.built for layer in walk_layers(model)],
        [(v.path, id(v)) for v in model.weights],
        [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights],
    )


def _fit_to_target(model, sparsity):
    model.compile("adam", "mse")
    x = np.random.default_rng(1).standard_normal((32, FEATURES)).astype("float32")
    y = np.zeros((32, model.units[-1]), "float32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[ks.callbacks.Pruning()])
    for layer in model.blocks:
        assert isinstance(layer, SparseMixin) and layer.has_masks, layer.name
        assert abs(layer.sparsity - sparsity) < 0.05, (layer.name, layer.sparsity)


@pytest.mark.parametrize("built", [False, True], ids=["unbuilt", "built"])
def test_failed_prune_leaves_a_subclassed_model_unchanged(built):
    model = SubclassedNet(units=(6, 9, 4))
    if built:
        model(_x())
    before = _state(model)
    with pytest.raises(ValueError) as info:
        ks.prune(model, 0.5, pattern=ks.patterns.Block((3, 3)))
    message = str(info.value)
    assert "s2" in message and "Block(block_shape=(3, 3))" in message
    after = _state(model)
    assert after[:3] == before[:3]
    for a, b in zip(before[3], after[3]):
        np.testing.assert_array_equal(a, b)
    assert all(type(layer) is keras.layers.Dense for layer in model.blocks)

    ks.prune(model, 0.5, schedule=ks.schedules.ConstantSparsity(0.5, frequency=1))
    model(_x())
    assert all(layer.has_masks for layer in model.blocks)
    _fit_to_target(model, 0.5)


def test_build_error_names_the_layer_and_leaves_it_unbuilt():
    # The input dimension of an unbuilt Dense is unknown until it is called:
    # N:M along it can only be checked when the layer is built.
    model = SubclassedNet(units=(6, 8, 4))
    pruned = ks.prune(model, None, pattern="2:4")
    assert pruned is model
    with pytest.raises(ValueError) as info:
        model(np.zeros((2, 6), "float32"))
    message = str(info.value)
    for fragment in ("s0", "NByM(n=2, m=4)", "(6, 6)", "pattern"):
        assert fragment in message, message
    first = model.blocks[0]
    assert not first.built and not first.weights and not first.has_masks

    # A correct prune afterwards converts every layer fully.
    ks.prune(model, 0.5, schedule=ks.schedules.ConstantSparsity(0.5, frequency=1))
    model(_x())
    assert all(layer.built and layer.has_masks for layer in model.blocks)
    _fit_to_target(model, 0.5)


def test_sparse_layer_build_error_leaves_no_variables():
    layer = ks.layers.SparseDense(4, pattern="2:4", schedule=0.5)
    with pytest.raises(ValueError, match="NByM"):
        layer.build((None, 6))
    assert not layer.built and not layer.weights
    layer.configure_pruning(schedule=0.5)
    layer.build((None, 6))
    assert layer.built and layer.has_masks and len(layer.weights) == 3
