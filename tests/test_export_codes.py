"""Quantizers answer their own export codes (``Quantizer.export_codes``):
``(codes + offset) * scale`` is the forward output bit for bit for every
registered quantizer, a quantizer defined outside the package exports at
its precision with nothing to register, and random sparse quantized weights
round-trip through ``ks.export`` at their precision."""

import math
import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops

import keras_sparse as ks
from conftest import to_np
from keras_sparse import quantizers
from keras_sparse.ops import quantize as q_ops

#: Registered quantizers without an integer form: their output is exported
#: as floats.
NO_CODES = {"identity"}
_FLOATS = tuple(quantizers.REGISTRY[alias] for alias in NO_CODES)

# Every registered quantizer with its defaults, plus variants that take
# other code paths of the forward pass.
VARIANTS = [quantizers.REGISTRY[alias]() for alias in sorted(quantizers.REGISTRY)] + [
    quantizers.Uniform(bits=8, symmetric=False),
    quantizers.Uniform(bits=2, symmetric=False, per_channel=False),
    quantizers.Uniform(bits=1, symmetric=False),
    quantizers.Uniform(bits=4, per_channel=False),
    quantizers.Uniform(bits=3, clip_value=0.7),
    quantizers.Uniform(bits=5, symmetric=False, clip_value=3.0),
    quantizers.DoReFa(bits=3),
    quantizers.DoReFa(bits=6),
    quantizers.DoReFa(bits=3, mode="activations"),
    quantizers.LSQ(bits=3, signed=False),
    quantizers.LSQ(bits=5, initial_step=0.1),
    quantizers.SteTern(ternary_weight_networks=True, scaled=True),
    quantizers.SteTern(threshold_value=0.1, scaled=True),
    quantizers.PACT(bits=3, initial_clip=1.5),
]


def _decode(found):
    codes = to_np(found.codes)
    offset = np.float32(to_np(found.offset))
    scale = np.float32(to_np(found.scale))
    return codes, ((codes.astype(np.float32) + offset) * scale).astype(np.float32)


def _check_codes(quantizer, x, output_axes):
    state = quantizer.build(keras.layers.Layer(), x.shape, "q", value=x) or None
    out = to_np(quantizer(x, state=state, output_axes=output_axes, training=False))
    found = quantizer.export_codes(x, state, output_axes)
    assert found is not None, quantizer
    codes, decoded = _decode(found)
    assert codes.shape == x.shape
    np.testing.assert_array_equal(codes, np.round(codes))
    assert codes.min() >= 0 and codes.max() < 2**found.bits, (quantizer, codes)
    assert found.bits == quantizer.precision
    # Bit for bit (-0.0 and 0.0 compare equal: a packed export may turn one
    # into the other).
    np.testing.assert_array_equal(decoded, out, err_msg=repr(quantizer))


def test_variants_cover_every_registered_quantizer():
    assert {type(q) for q in VARIANTS} == set(quantizers.REGISTRY.values())


@pytest.mark.parametrize("alias", sorted(NO_CODES))
def test_quantizers_without_levels_export_floats(alias):
    quantizer = quantizers.REGISTRY[alias]()
    assert quantizer.export_codes(np.ones((3, 2), "float32"), None, (-1,)) is None


@pytest.mark.parametrize("quantizer", [q for q in VARIANTS if not isinstance(q, _FLOATS)],
                         ids=repr)
@pytest.mark.parametrize("output_axes", [(-1,), ()], ids=["per_channel", "per_tensor"])
def test_codes_reproduce_the_forward_output_bit_for_bit(quantizer, output_axes):
    rng = np.random.default_rng(0)
    for scale in (1e-3, 1.0, 300.0):
        x = (rng.standard_normal((6, 5)) * scale).astype("float32")
        x[rng.random(x.shape) < 0.3] = 0.0  # pruned entries
        x[0, 0] = -x[1, 1]  # ties in magnitude
        _check_codes(quantizer, x, output_axes)
    _check_codes(quantizer, np.zeros((3, 2), "float32"), output_axes)


def test_codes_of_a_layer_reproduce_its_stripped_kernel():
    # The state a layer built (an LSQ step) is the one its codes use.
    for quantizer in VARIANTS:
        if isinstance(quantizer, _FLOATS):
            continue
        keras.utils.set_random_seed(1)
        layer = ks.layers.SparseDense(4, kernel_quantizer=quantizer, masked=True)
        layer.build((None, 6))
        mask = np.random.default_rng(2).random((6, 4)) < 0.6
        layer.write_mask("kernel", mask)
        found = quantizer.export_codes(layer.masked_latent("kernel"),
                                       layer.quantizer_state("kernel") or None, (-1,))
        _, decoded = _decode(found)
        kernel = layer.stripped_weights()[0]
        np.testing.assert_array_equal(np.where(mask, decoded, 0.0), kernel,
                                      err_msg=repr(quantizer))


# ------------------------------------------- a quantizer from outside
class HalfSteps(quantizers.Quantizer):
    """3-bit levels ``{-2, -1.5, ..., 1.5}``: ``clip(round(2x), -4, 3) / 2``."""

    precision = 3
    keeps_zero = True

    def _levels(self, x):
        return ops.clip(ops.round(ops.convert_to_tensor(x, "float32") * 2.0), -4.0, 3.0)

    def __call__(self, x, state=None, output_axes=None, training=None):
        x = ops.convert_to_tensor(x, "float32")
        return q_ops.straight_through(self._levels(x) * 0.5, x)

    def export_codes(self, x, state=None, output_axes=None):
        return quantizers.AffineCodes(self._levels(x) + 4.0, -4.0, 0.5, 3)


def test_a_quantizer_defined_outside_the_package_exports_at_its_precision(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, name="dense")])
    model = ks.quantize(model, HalfSteps())
    kernel = np.random.default_rng(0).uniform(-2.5, 2.5, (16, 32)).astype("float32")
    model.get_layer("dense").latent_weight("kernel").assign(kernel)
    path = os.path.join(tmp_path, "half.kspk")
    info = ks.export(model, path)
    kernel = next(w for w in info["weights"] if w["weight"] == "kernel")
    assert kernel["encoding"] == "affine"
    # 3 bits packed at 4 per code, one float32 offset and one scale.
    assert kernel["bytes"] == 16 * 32 * 4 // 8 + 4 + 4
    loaded = ks.load_exported(path)
    np.testing.assert_array_equal(to_np(loaded.get_layer("dense").kernel),
                                  ks.strip(model).get_layer("dense").get_weights()[0])
    assert set(np.unique(to_np(loaded.get_layer("dense").kernel) * 2)) <= set(range(-4, 4))


# ------------------------------------------------ random round trips
class _One(keras.Model):
    """A model of one layer. Subclassed, so its export holds weights only
    and reloads into a built plain instance: no model config to clone or
    rebuild per example."""

    def __init__(self, layer):
        super().__init__()
        self.w = layer

    def call(self, x):
        return self.w(x)


# Two layer shapes, built once per quantizer (JAX compiles each op once per
# shape and code path); the examples vary the latent values and the mask.
KINDS = {
    "dense": ((5,), lambda **kw: ks.layers.SparseDense(3, **kw), lambda: keras.layers.Dense(3)),
    "conv": ((4, 4, 3), lambda **kw: ks.layers.SparseConv2D(4, 2, **kw),
             lambda: keras.layers.Conv2D(4, 2)),
}
# Every registered quantizer and the variants with their own code paths.
ROUND_TRIP = [quantizers.REGISTRY[alias]() for alias in sorted(quantizers.REGISTRY)] + [
    quantizers.Uniform(bits=8, symmetric=False),
    quantizers.Uniform(bits=3, per_channel=False),
    quantizers.SteTern(ternary_weight_networks=True, scaled=True),
    quantizers.DoReFa(bits=3, mode="activations"),
]
_MODELS = {}


def _built(kind, layer):
    model = _One(layer)
    model(np.zeros((1,) + KINDS[kind][0], "float32"))
    return model


def _models(index, kind):
    """The sparse quantized model of ``ROUND_TRIP[index]`` and a plain one
    of the same shapes (built once per key)."""
    if (index, kind) not in _MODELS:
        keras.utils.set_random_seed(index)
        _, sparse, plain = KINDS[kind]
        _MODELS[index, kind] = (
            _built(kind, sparse(kernel_quantizer=ROUND_TRIP[index], masked=True)),
            _MODELS.get(kind) or _built(kind, plain()),
        )
        _MODELS[kind] = _MODELS[index, kind][1]
    return _MODELS[index, kind]


# Exact zeros and magnitudes in [2^-20, 1e4]: scales stay normal floats.
_ELEMENTS = st.one_of(
    st.just(0.0),
    st.floats(2.0**-20, 1e4, width=32),
    st.floats(-1e4, -(2.0**-20), width=32),
)


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(index=st.sampled_from(range(len(ROUND_TRIP))), kind=st.sampled_from(sorted(KINDS)),
       data=st.data())
def test_random_sparse_quantized_weights_round_trip_at_their_precision(
        tmp_path, monkeypatch, index, kind, data):
    # Syncing to disk is what atomic writes need (tested in
    # test_export_corrupt); here it would only cost time per example.
    monkeypatch.setattr(os, "fsync", lambda descriptor: None)
    model, plain = _models(index, kind)
    layer = model.w
    shape = tuple(layer.latent_weight("kernel").shape)
    latent = data.draw(hnp.arrays("float32", shape, elements=_ELEMENTS), label="latent")
    mask = data.draw(hnp.arrays(bool, shape), label="mask")
    layer.latent_weight("kernel").assign(latent)
    layer.write_mask("kernel", mask)
    path = os.path.join(tmp_path, "random.kspk")
    info = ks.export(model, path)
    ks.load_exported(path, model=plain)
    expected = layer.stripped_weights()
    for ours, theirs in zip(plain.w.get_weights(), expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    quantizer = ROUND_TRIP[index]
    kernel = next(w for w in info["weights"] if w["weight"] == "kernel")
    if isinstance(quantizer, _FLOATS):
        assert kernel["encoding"] in ("raw", "bitmap")
        return
    # Stored at the quantizer's precision: packed codes (all of them, or the
    # kept ones and a 1-bit map), and float32 offsets and scales (at most
    # one of each per output unit).
    width = next(w for w in (1, 2, 4, 8) if quantizer.precision <= w)
    size, kept = math.prod(shape), int(np.count_nonzero(expected[0]))
    packed = min(math.ceil(size * width / 8), math.ceil(size / 8) + math.ceil(kept * width / 8))
    assert kernel["bytes"] <= packed + 4 * 2 * shape[-1], (kernel, quantizer)
