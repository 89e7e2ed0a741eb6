"""The layer contract (``keras_sparse.testing.run_layer_test``) over every
layer of ``ks.layers``, with masks pruned to 50 % before saving."""

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import testing

# class name -> (init kwargs, input shape, expected output shape,
#                trainable weights, non-trainable weights (masks))
CASES = {
    "SparseDense": ({"units": 4}, (2, 8), (2, 4), 2, 1),
    "SparseConv1D": ({"filters": 4, "kernel_size": 3}, (2, 8, 4), (2, 6, 4), 2, 1),
    "SparseConv2D": ({"filters": 4, "kernel_size": 3}, (2, 6, 6, 4), (2, 4, 4, 4), 2, 1),
    "SparseConv3D": (
        {"filters": 4, "kernel_size": 2}, (2, 4, 4, 4, 4), (2, 3, 3, 3, 4), 2, 1
    ),
    "SparseConv1DTranspose": (
        {"filters": 4, "kernel_size": 3}, (2, 5, 4), (2, 7, 4), 2, 1
    ),
    "SparseConv2DTranspose": (
        {"filters": 4, "kernel_size": 3}, (2, 4, 4, 4), (2, 6, 6, 4), 2, 1
    ),
    "SparseConv3DTranspose": (
        {"filters": 4, "kernel_size": 2}, (2, 3, 3, 3, 4), (2, 4, 4, 4, 4), 2, 1
    ),
    "SparseDepthwiseConv1D": ({"kernel_size": 3}, (2, 8, 4), (2, 6, 4), 2, 1),
    "SparseDepthwiseConv2D": (
        {"kernel_size": 3, "depth_multiplier": 2}, (2, 6, 6, 4), (2, 4, 4, 8), 2, 1
    ),
    "SparseSeparableConv1D": (
        {"filters": 4, "kernel_size": 3}, (2, 8, 4), (2, 6, 4), 3, 2
    ),
    "SparseSeparableConv2D": (
        {"filters": 4, "kernel_size": 3}, (2, 6, 6, 4), (2, 4, 4, 4), 3, 2
    ),
    "SparseEinsumDense": (
        {"equation": "ab,bc->ac", "output_shape": 4, "bias_axes": "c"}, (2, 8), (2, 4), 2, 1
    ),
    "SparseEmbedding": ({"input_dim": 10, "output_dim": 4}, None, (2, 5, 4), 1, 1),
}


def test_cases_cover_every_layer():
    exported = {
        name
        for name in ks.layers.__all__
        if isinstance(getattr(ks.layers, name), type)
        and issubclass(getattr(ks.layers, name), ks.layers.SparseMixin)
        and getattr(ks.layers, name) is not ks.layers.SparseMixin
    }
    assert exported == set(CASES)
    assert {cls.__name__ for cls in ks.layers.SPARSE_CLASS_FOR.values()} == set(CASES)


def _input(input_shape):
    if input_shape is None:  # Embedding: integer ids
        return {"input_data": np.arange(10, dtype="int32").reshape(2, 5)}
    return {"input_shape": input_shape}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_contract(name):
    kwargs, input_shape, output_shape, n_trainable, n_masks = CASES[name]
    testing.run_layer_test(
        getattr(ks.layers, name),
        kwargs,
        **_input(input_shape),
        expected_output_shape=output_shape,
        expected_num_trainable_weights=n_trainable,
        expected_num_non_trainable_weights=n_masks,
    )


@pytest.mark.parametrize(
    "pattern", ["channel", ks.patterns.Block((2, 2)), "2:4"], ids=["channel", "block", "2:4"]
)
def test_layer_contract_structured_patterns(pattern):
    testing.run_layer_test(
        ks.layers.SparseConv2D,
        {"filters": 4, "kernel_size": 3, "pattern": pattern},
        input_shape=(2, 6, 6, 4),
        expected_output_shape=(2, 4, 4, 4),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=1,
        run_mixed_precision_check=False,
    )


@pytest.mark.slow
def test_layer_contract_with_schedule():
    testing.run_layer_test(
        ks.layers.SparseDense,
        {"units": 4, "schedule": ks.schedules.ConstantSparsity(0.75, frequency=1)},
        input_shape=(2, 8),
        expected_output_shape=(2, 4),
        run_mixed_precision_check=False,
    )


class _NotSparse(keras.layers.Dense):
    pass


@keras.saving.register_keras_serializable(package="test_layer_contract")
class _NoMask(ks.layers.SparseDense):
    """Hides its mask: the contract must notice."""

    def _add_masks(self):
        pass


@keras.saving.register_keras_serializable(package="test_layer_contract")
class _DropsConfig(ks.layers.SparseDense):
    """Forgets its schedule in get_config: the contract must notice."""

    def get_config(self):
        config = super().get_config()
        config["schedule"] = None
        return config


@keras.saving.register_keras_serializable(package="test_layer_contract")
class _ForgetsMask(ks.layers.SparseDense):
    """Loses its mask on load: the contract must notice."""

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self.kernel_mask.assign(np.ones(self.kernel_mask.shape, bool))


@pytest.mark.parametrize(
    "layer_cls, kwargs, message",
    [
        (_NotSparse, {"units": 4}, "does not subclass SparseMixin"),
        (_NoMask, {"units": 4}, "'kernel' has no mask"),
        (_DropsConfig, {"units": 4, "schedule": 0.5}, "round trip changed schedule"),
        (_ForgetsMask, {"units": 4}, "kernel_mask' is not bit-identical"),
    ],
    ids=["not-sparse", "no-mask", "drops-config", "forgets-mask"],
)
def test_contract_detects_broken_layers(layer_cls, kwargs, message):
    with pytest.raises(AssertionError, match=message):
        testing.run_layer_test(
            layer_cls, kwargs, input_shape=(2, 8),
            run_training_check=False, run_mixed_precision_check=False,
        )


def test_contract_checks_weight_counts_and_shapes():
    with pytest.raises(AssertionError, match="Expected 3 trainable weights"):
        testing.run_layer_test(
            ks.layers.SparseDense, {"units": 4}, input_shape=(2, 8),
            expected_num_trainable_weights=3,
        )
    with pytest.raises(AssertionError, match="Expected output shape"):
        testing.run_layer_test(
            ks.layers.SparseDense, {"units": 4}, input_shape=(2, 8),
            expected_output_shape=(2, 5),
        )


def test_contract_rejects_both_or_no_inputs():
    with pytest.raises(ValueError, match="exactly one"):
        testing.run_layer_test(ks.layers.SparseDense, {"units": 4})
    with pytest.raises(ValueError, match="exactly one"):
        testing.run_layer_test(
            ks.layers.SparseDense, {"units": 4}, input_shape=(2, 8),
            input_data=np.zeros((2, 8), "float32"),
        )

