"""``ks.report(model, data=...)``: activation sparsity measured on data and the
FLOPs the next Dense/Conv layer could save, against numpy."""

import json

import keras
import numpy as np
import pytest

import keras_sparse as ks


def _np(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def _data(n=120, features=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, features)).astype("float32")
    x[x < -0.5] = 0.0  # the input has zeros too
    return x


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((16,), name="features"),
        keras.layers.Dense(24, activation="relu", name="hidden"),
        keras.layers.Dense(12, name="pre"),
        ks.layers.TopKActivation(k=3, name="kwta"),
        keras.layers.Dropout(0.5, name="drop"),
        keras.layers.Dense(5, name="logits"),
    ])


def test_zero_fractions_and_saveable_flops_match_numpy():
    model = ks.prune(_mlp(), 0.5)
    for layer in model.layers:
        if isinstance(layer, ks.layers.SparseMixin):
            layer.prune_to(0.5)
    x = _data()
    result = ks.report(model, print_fn=None, data=x, batch_size=32)
    weights = {layer.name: [_np(w) for w in (layer.effective_weight("kernel"), layer.bias)]
               for layer in model.layers if layer.weights}
    hidden = np.maximum(x @ weights["hidden"][0] + weights["hidden"][1], 0)
    pre = hidden @ weights["pre"][0] + weights["pre"][1]
    kept = np.zeros_like(pre, bool)
    np.put_along_axis(kept, np.argsort(-pre, axis=-1, kind="stable")[:, :3], True, axis=-1)
    expected = [("features", "hidden", np.mean(x == 0)),
                ("hidden", "pre", np.mean(hidden == 0)),
                ("drop", "logits", 9 / 12)]
    flops = {row["layer"]: row["effective_flops"] for row in result.rows}
    assert [(r["layer"], r["feeds"]) for r in result.activations] == [e[:2] for e in expected]
    for row, (_, feeds, zeros) in zip(result.activations, expected):
        assert row["zeros"] == pytest.approx(zeros, abs=1e-9)
        assert row["flops"] == flops[feeds]  # effective: the weight mask counts
        assert row["saveable_flops"] == round(zeros * flops[feeds])
    assert flops["hidden"] == 16 * 24  # 50 % of 2 * 16 * 24
    data = json.loads(json.dumps(result.to_dict()))
    assert data["activations"] == result.activations


def test_conv_inputs_are_measured():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten(name="flat")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(h))
    x = np.maximum(np.random.default_rng(1).normal(size=(20, 6, 6, 2)), 0).astype("float32")
    result = ks.report(model, print_fn=None, data=x)
    conv_out = _np(keras.Model(inputs, model.get_layer("conv").output)(x))
    assert [(r["layer"], r["feeds"]) for r in result.activations] == [
        ("image", "conv"), ("flat", "fc")]
    assert result.activations[0]["zeros"] == pytest.approx(np.mean(x == 0))
    assert result.activations[1]["zeros"] == pytest.approx(np.mean(conv_out == 0))
    conv_flops = 2 * 3 * 3 * 2 * 4 * 4 * 4
    assert result.activations[0]["flops"] == conv_flops
    assert result.activations[0]["saveable_flops"] == round(np.mean(x == 0) * conv_flops)


def test_text_section_and_no_data_keeps_the_report_as_it_was():
    model = _mlp()
    printed = []
    plain = ks.report(model, print_fn=printed.append)
    assert plain.activations is None and "activations" not in plain.to_dict()
    assert "activation sparsity" not in printed[0]
    measured = ks.report(model, print_fn=None, data=_data())
    text = str(measured)
    assert text.startswith(printed[0] + "\n\n")
    section = text[len(printed[0]):]
    assert "activation sparsity on data" in section and "saveable FLOPs" in section
    assert "75.0%" in section  # 9 of 12 entries zero after the top-3 layer
    total = sum(r["saveable_flops"] for r in measured.activations)
    assert f"{total:,}" in section.splitlines()[-1]


def test_subclassed_model_with_data_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="Sequential or functional"):
        ks.report(net, print_fn=None, data=np.zeros((2, 4), "float32"))
    assert ks.report(net, print_fn=None).activations is None
