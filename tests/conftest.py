"""Shared test fixtures and helpers.

Helpers are plain functions (``from conftest import to_np``) and also
fixtures of the same purpose, so a test can use whichever reads better.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# The first call of a backend op compiles or traces it; a per-example deadline
# would then fail on a slow shared machine rather than on a real problem.
settings.register_profile("keras_sparse", deadline=None)
settings.load_profile("keras_sparse")


def to_np(x):
    """Any backend tensor, numpy array or Python value as a numpy array.

    Low-precision floats (``float16`` / ``bfloat16`` tensors) are widened to
    ``float32`` so numpy can compare them.
    """
    if hasattr(x, "dtype") and keras.backend.standardize_dtype(x.dtype) == "bfloat16":
        x = keras.ops.cast(x, "float32")
    return np.asarray(keras.ops.convert_to_numpy(x))


def backend_name():
    return keras.backend.backend()


@pytest.fixture
def rng():
    """A seeded numpy generator, fresh for every test."""
    return np.random.default_rng(0)


@pytest.fixture(name="to_np")
def _to_np_fixture():
    return to_np


# ------------------------------------------------------------------ autodiff
# Reference gradients with the active backend's own autodiff (no keras_sparse
# code), so tests written once run on TensorFlow, JAX and torch.
def backend_grad(fn, args):
    """Gradients of scalar ``fn(*tensors)`` with respect to every arg, as
    numpy arrays (zeros where the output does not depend on an arg)."""
    args = [np.asarray(a) for a in args]
    backend = backend_name()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            out = fn(*tensors)
        grads = tape.gradient(out, tensors)
    elif backend == "jax":
        import jax

        grads = jax.grad(fn, argnums=tuple(range(len(args))))(*args)
    elif backend == "torch":
        import torch

        tensors = [keras.ops.convert_to_tensor(a).requires_grad_(True) for a in args]
        grads = torch.autograd.grad(fn(*tensors), tensors, allow_unused=True)
    else:
        pytest.skip(f"no reference autodiff for backend {backend}")
    return [np.zeros_like(a) if g is None else to_np(g) for a, g in zip(args, grads)]


def layer_grads(layer, x, cotangent):
    """Gradients of ``sum(layer(x) * cotangent)`` with respect to the input
    (``None`` for an integer input) and every trainable variable (``None``
    for a variable the output does not depend on, zeros on JAX)."""
    float_input = x.dtype.kind == "f"
    backend = backend_name()
    if backend == "jax":
        import jax

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(trainable, inputs):
            outputs, _ = layer.stateless_call(trainable, non_trainable, inputs)
            return jax.numpy.sum(outputs * cotangent)

        trainable = [v.value for v in layer.trainable_variables]
        if not float_input:
            return None, jax.grad(loss)(trainable, x)
        grads, grad_x = jax.grad(loss, argnums=(0, 1))(trainable, x)
        return grad_x, grads
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * cotangent)
        grad_x, grads = tape.gradient(loss, [x, layer.trainable_variables])
        return (grad_x if float_input else None), grads
    if backend == "torch":
        import torch

        inputs = keras.ops.convert_to_tensor(x)
        if float_input:
            inputs.requires_grad_(True)
        loss = torch.sum(layer(inputs) * keras.ops.convert_to_tensor(cotangent))
        targets = [v.value for v in layer.trainable_variables]
        targets += [inputs] if float_input else []
        grads = list(torch.autograd.grad(loss, targets, allow_unused=True))
        grad_x = grads.pop() if float_input else None
        return grad_x, grads
    pytest.skip(f"no reference autodiff for backend {backend}")


#: Tests of ``steps_per_execution`` > 1, which Keras' torch backend refuses
#: ("`steps_per_execution` must be 1 with the PyTorch backend").
multi_step_execution = pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="Keras' torch backend runs one step per call (steps_per_execution=1)",
)
