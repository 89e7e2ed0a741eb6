"""The fused kernel path on TensorFlow: inside a traced step a layer's
quantizer and mask run as one XLA-compiled function (forward and gradient).
It must give exactly what the op-by-op path gives."""

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import quantizers

pytestmark = pytest.mark.tf_only

WEIGHT_QUANTIZERS = {
    "ste_sign": lambda: quantizers.SteSign(),
    "approx_sign": lambda: quantizers.ApproxSign(),
    "swish_sign": lambda: quantizers.SwishSign(beta=3.0),
    "magnitude_aware_sign": lambda: quantizers.MagnitudeAwareSign(),
    "ste_tern": lambda: quantizers.SteTern(ternary_weight_networks=True, scaled=True),
    "uniform_8": lambda: quantizers.Uniform(bits=8, per_channel=True),
    "uniform_asym": lambda: quantizers.Uniform(bits=4, symmetric=False, per_channel=True),
    "dorefa": lambda: quantizers.DoReFa(bits=3),
    "lsq": lambda: quantizers.LSQ(bits=4),
}


SHAPE = (96, 64)  # above FUSE_MIN_SIZE entries


def _layer(quantizer, fusable, shape=SHAPE):
    keras.utils.set_random_seed(1)
    layer = ks.layers.SparseDense(shape[1], kernel_quantizer=quantizer, masked=True)
    layer.build((None, shape[0]))
    rng = np.random.RandomState(0)
    latent = rng.uniform(-1.5, 1.5, shape).astype("float32")
    latent[0, :3] = [0.0, 1.0, -1.0]  # exact 0 and +-clip
    layer.latent_weight("kernel").assign(latent)
    layer.set_mask("kernel", rng.rand(*shape) > 0.4)
    layer.kernel_quantizer.fusable = fusable
    layer.initialize_quantizers()
    return layer


def _step(layer):
    import tensorflow as tf

    shape = tuple(layer.latent_weight("kernel").shape)
    upstream = tf.constant(np.random.RandomState(2).randn(*shape).astype("float32"))
    variables = [layer.latent_weight("kernel")] + layer.quantizer_variables()

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            kernel = layer.kernel
            loss = tf.reduce_sum(kernel * upstream)
        return kernel, tape.gradient(loss, variables)

    kernel, grads = run()
    return kernel.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("name", sorted(WEIGHT_QUANTIZERS))
def test_fused_kernel_and_gradients_equal_the_op_by_op_path(name):
    fused_layer = _layer(WEIGHT_QUANTIZERS[name](), fusable=True)
    plain_layer = _layer(WEIGHT_QUANTIZERS[name](), fusable=False)
    kernel, grads = _step(fused_layer)
    plain_kernel, plain_grads = _step(plain_layer)
    assert fused_layer._fused_weights, "the traced step did not take the fused path"
    assert not plain_layer._fused_weights
    np.testing.assert_allclose(kernel, plain_kernel, rtol=1e-6, atol=1e-7)
    mask = keras.ops.convert_to_numpy(fused_layer.get_mask("kernel"))
    assert np.all(kernel[~mask] == 0.0)
    assert np.all(grads[0][~mask] == 0.0)
    for fused_grad, plain_grad in zip(grads, plain_grads):
        np.testing.assert_allclose(fused_grad, plain_grad, rtol=1e-5, atol=1e-6)


def test_small_kernels_run_op_by_op():
    from keras_sparse.layers.base import FUSE_MIN_SIZE

    small = _layer(quantizers.SteSign(), fusable=True, shape=(40, 24))
    assert 40 * 24 < FUSE_MIN_SIZE <= SHAPE[0] * SHAPE[1]
    kernel, _ = _step(small)
    assert not small._fused_weights
    mask = keras.ops.convert_to_numpy(small.get_mask("kernel"))
    assert set(np.unique(kernel[mask])) <= {-1.0, 1.0} and np.all(kernel[~mask] == 0)


def test_eager_reads_do_not_compile():
    layer = _layer(quantizers.SteSign(), fusable=True)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    assert not layer._fused_weights
    mask = keras.ops.convert_to_numpy(layer.get_mask("kernel"))
    assert set(np.unique(kernel[mask])) <= {-1.0, 1.0}


def test_fused_functions_are_dropped_when_the_quantizer_changes():
    layer = _layer(quantizers.SteSign(), fusable=True)
    _step(layer)
    assert layer._fused_weights
    layer.configure_quantization(quantizers.Uniform(bits=4))
    assert not layer._fused_weights
    kernel, _ = _step(layer)
    assert len(np.unique(kernel)) > 3
