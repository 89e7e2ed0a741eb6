import json

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import keras_sparse as ks
from conftest import to_np
from keras_sparse.constraints import WeightClip


def test_weight_clip_matches_numpy_including_the_bounds():
    w = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0001, 7.0], "float32")
    out = to_np(WeightClip(1.0)(w))
    np.testing.assert_array_equal(out, np.clip(w, -1.0, 1.0))
    # Values exactly at +-c are kept, values beyond land exactly on +-c.
    assert out[1] == -1.0 and out[5] == 1.0 and out[6] == 1.0 and out[0] == -1.0


@given(
    hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=5),
               elements=st.floats(-100, 100, width=32, allow_subnormal=False)),
    st.floats(1e-3, 10),
)
def test_weight_clip_bounds_and_idempotence(w, c):
    clip = WeightClip(c)
    once = to_np(clip(w))
    bound = np.float32(c)
    assert np.all(np.abs(once) <= bound)
    np.testing.assert_array_equal(to_np(clip(once)), once)
    inside = np.abs(w) <= bound
    np.testing.assert_array_equal(once[inside], w[inside])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_weight_clip_keeps_low_precision_dtypes(dtype):
    w = keras.ops.cast(np.array([-2.0, 0.25, 3.0]), dtype)
    out = WeightClip(0.5)(w)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    np.testing.assert_array_equal(to_np(out), [-0.5, 0.25, 0.5])


def test_weight_clip_config_round_trip_and_alias():
    clip = WeightClip(0.75)
    assert WeightClip.from_config(clip.get_config()) == clip
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(clip)))
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, WeightClip) and restored.clip_value == 0.75
    assert ks.constraints.get("weight_clip") == WeightClip(1.0)
    assert ks.constraints.get("Weight_Clip") == WeightClip(1.0)
    assert ks.constraints.get(config) == clip
    assert ks.constraints.get(clip) is clip
    # Keras' own constraints still resolve through ks.constraints.get.
    assert isinstance(ks.constraints.get("non_neg"), keras.constraints.NonNeg)
    assert ks.constraints.get(None) is None


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "1", True, None])
def test_weight_clip_rejects_bad_clip_values(bad):
    with pytest.raises(ValueError, match="clip_value="):
        WeightClip(bad)


@pytest.mark.slow
def test_weight_clip_as_kernel_constraint_in_fit_and_reload(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(3, kernel_constraint=WeightClip(0.05),
                           kernel_initializer=keras.initializers.RandomNormal(stddev=1.0)),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 3)).astype("float32")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    kernel = to_np(model.layers[0].kernel)
    assert np.all(np.abs(kernel) <= np.float32(0.05))
    # Most entries start far outside the bound: the clip really acted.
    assert np.mean(np.abs(kernel) == np.float32(0.05)) > 0.5
    path = tmp_path / "clip.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.layers[0].kernel_constraint == WeightClip(0.05)
