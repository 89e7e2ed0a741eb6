"""``ks.report`` against hand-computed parameter, non-zero and FLOP counts.

FLOPs count a multiply-accumulate as 2, per example; only kernels take part
(biases add no MACs). A convolution costs ``2 * kh * kw * cin * cout *
H_out * W_out``; with a mask only the kept kernel entries count.
"""

import json

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse.layers import SparseMixin


def _np(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def _nonzero_biases(model, seed=0):
    """Give every bias non-zero values so the non-zero counts are exact."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.uniform(0.1, 1.0, size=tuple(layer.bias.shape)))
    return model


def _mlp():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits"),
    ])
    return _nonzero_biases(model)


def _cnn():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((10, 10, 3)),
        keras.layers.Conv2D(8, 3, padding="valid", activation="relu", name="conv_a"),  # 8x8x8
        keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv_b"),  # 4x4x4
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(5, name="fc"),
    ])
    return _nonzero_biases(model)


# (kernel shape, bias size, output positions per example)
MLP_LAYERS = {"hidden": ((64, 32), 32, 1), "logits": ((32, 10), 10, 1)}
CNN_LAYERS = {
    "conv_a": ((3, 3, 3, 8), 8, 8 * 8),
    "conv_b": ((3, 3, 8, 4), 4, 4 * 4),
    "fc": ((64, 5), 5, 1),
}


def _pruned(builder, sparsity):
    model = ks.prune(builder(), sparsity)
    for layer in model.layers:
        if isinstance(layer, SparseMixin):
            layer.prune_to(sparsity)
    return model


def _expected_rows(spec, sparsity):
    rows = {}
    for name, (shape, bias, positions) in spec.items():
        size = int(np.prod(shape))
        kept = size - int(round(sparsity * size))
        rows[name] = dict(
            params=size + bias,
            nonzeros=kept + bias,
            masked_params=size,
            masked_nonzeros=kept,
            dense_bytes=4 * (size + bias),
            dense_flops=2 * size * positions,
            effective_flops=2 * kept * positions,
            sparsity=(size - kept) / size,
        )
    return rows


def _check_report(result, spec, sparsity, sparse):
    expected = _expected_rows(spec, sparsity)
    rows = {row["layer"]: row for row in result.rows}
    assert list(rows) == list(spec)  # weightless layers (Flatten) have no row
    for name, want in expected.items():
        row = rows[name]
        for key in ("params", "nonzeros", "dense_bytes", "dense_flops", "effective_flops"):
            assert row[key] == want[key], (name, key)
        assert row["sparsity"] == pytest.approx(
            want["sparsity"] if sparse else 1 - want["nonzeros"] / want["params"]
        )
    totals = result.totals
    for key in ("params", "nonzeros", "dense_bytes", "dense_flops", "effective_flops"):
        assert totals[key] == sum(w[key] for w in expected.values()), key
    if sparse:
        masked = sum(w["masked_params"] for w in expected.values())
        kept = sum(w["masked_nonzeros"] for w in expected.values())
        assert totals["sparsity"] == pytest.approx(1 - kept / masked)


@pytest.mark.parametrize("builder, spec", [(_mlp, MLP_LAYERS), (_cnn, CNN_LAYERS)],
                         ids=["mlp", "cnn"])
def test_dense_model_counts(builder, spec):
    result = ks.report(builder(), print_fn=None)
    _check_report(result, spec, 0.0, sparse=False)
    for row in result.rows:
        assert row["dense_flops"] == row["effective_flops"]
        assert row["compressed_bytes"] == row["dense_bytes"]


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
@pytest.mark.parametrize("builder, spec", [(_mlp, MLP_LAYERS), (_cnn, CNN_LAYERS)],
                         ids=["mlp", "cnn"])
def test_pruned_model_counts(builder, spec, sparsity):
    model = _pruned(builder, sparsity)
    result = ks.report(model, print_fn=None)
    _check_report(result, spec, sparsity, sparse=True)
    for row in result.rows:
        assert row["pattern"] == "Unstructured"
        assert row["effective_flops"] < row["dense_flops"]


def test_compressed_bytes_below_dense_at_90_percent():
    for builder in (_mlp, _cnn):
        result = ks.report(_pruned(builder, 0.9), print_fn=None)
        for row in result.rows:
            assert 0 < row["compressed_bytes"] < row["dense_bytes"], row["layer"]
            # At least the kept values and the dense bias must be stored.
            assert row["compressed_bytes"] >= 4 * row["nonzeros"]
        assert result.totals["compressed_bytes"] < result.totals["dense_bytes"] / 2


@pytest.mark.parametrize("pattern", ["2:4", "channel"])
def test_structured_patterns_are_reported(pattern):
    model = ks.prune(_mlp(), 0.5, pattern=pattern)
    for layer in model.layers:
        layer.prune_to(0.5)
    result = ks.report(model, print_fn=None)
    expected = _expected_rows(MLP_LAYERS, 0.5)
    for row in result.rows:
        assert row["pattern"] == ("NByM" if pattern == "2:4" else "Channel")
        assert row["nonzeros"] == expected[row["layer"]]["nonzeros"]
        assert row["effective_flops"] == expected[row["layer"]]["effective_flops"]
        assert row["compressed_bytes"] < row["dense_bytes"]


class _EveryOther(ks.patterns.Pattern):
    """Keeps every other input row: no index to store (the structure is
    known), which the report learns from the pattern alone."""

    def mask(self, scores, sparsity, layout):
        rows = np.arange(scores.shape[0]) % 2 == 0
        return np.broadcast_to(rows[:, None], scores.shape).copy()

    def index_bytes(self, shape, kept, layout):
        return 0


def test_a_pattern_defined_outside_the_package_answers_its_index_cost():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, use_bias=False,
                                                                   name="dense")])
    model = ks.prune(model, 0.5, pattern=_EveryOther())
    layer = model.get_layer("dense")
    layer.prune_to(0.5)
    row = ks.report(model, print_fn=None).rows[0]
    assert row["nonzeros"] == 16 and row["pattern"] == "_EveryOther"
    assert row["compressed_bytes"] == 16 * 4  # values only


def test_stripped_model_reports_the_same_savings():
    model = _pruned(_cnn, 0.8)
    sparse = ks.report(model, print_fn=None).totals
    plain = ks.report(ks.strip(model), print_fn=None).totals
    for key in ("params", "nonzeros", "dense_flops", "effective_flops", "dense_bytes"):
        assert plain[key] == sparse[key], key


def test_nested_model_rows_include_inner_layers():
    inner = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, name="inner_dense")],
                             name="inner")
    inp = keras.Input((64,))
    out = keras.layers.Dense(10, name="head")(inner(inp))
    model = ks.prune(keras.Model(inp, out), 0.5)
    result = ks.report(model, print_fn=None)
    assert [row["layer"] for row in result.rows] == ["inner_dense", "head"]
    assert result.totals["params"] == 64 * 32 + 32 + 32 * 10 + 10


def test_text_and_json_output():
    model = _pruned(_cnn, 0.9)
    printed = []
    result = ks.report(model, print_fn=printed.append)
    text = str(result)
    assert printed == [text]
    for name in CNN_LAYERS:
        assert name in text
    assert "total" in text
    assert "flat" not in text  # no weights, no row
    data = json.loads(json.dumps(result.to_dict()))
    assert [row["layer"] for row in data["layers"]] == list(CNN_LAYERS)
    assert data["totals"]["params"] == result.totals["params"]
    assert data["totals"]["effective_flops"] == result.totals["effective_flops"]


def test_report_after_training_is_json_serializable():
    model = ks.prune(_mlp(), 0.75)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.RandomState(0).randn(32, 64).astype("float32")
    y = np.random.RandomState(1).randint(0, 10, size=32)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[ks.callbacks.Pruning()])
    result = ks.report(model, print_fn=None)
    json.dumps(result.to_dict())
    for row in result.rows:
        assert row["sparsity"] == pytest.approx(0.75, abs=1 / 320)


def test_attention_weights_are_counted_once():
    inp = keras.Input((5, 8))
    model = keras.Model(inp, keras.layers.MultiHeadAttention(2, 4)(inp, inp))
    result = ks.report(model, print_fn=None)
    assert result.totals["params"] == model.count_params()
    assert [row["layer"] for row in result.rows] == ["query", "key", "value", "attention_output"]
