"""The one place that knows which Keras backend is running.

Everything backend-specific (the JAX state sync, reading a step counter)
lives here so the rest of the package is written with ``keras.ops`` only.
"""

import keras
from keras import ops


def name():
    """The active Keras backend name (``"tensorflow"``, ``"jax"``, ...)."""
    return keras.backend.backend()


def sync_model_state(model):
    """Make the model's Keras variables current before a callback reads or
    assigns them. On JAX, ``fit`` keeps the live state outside the variables
    (reading them otherwise fails with ``'NoneType' object is not callable``);
    after the sync the trainer re-reads the variables, so assignments made by
    the callback are used by the next step."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None and name() == "jax":
        sync()


def read_int(variable):
    """Read a scalar integer variable (e.g. ``optimizer.iterations``)."""
    return int(ops.convert_to_numpy(variable))


def is_traced(tensor):
    """Whether ``tensor`` is symbolic (inside ``tf.function`` or ``jax.jit``),
    so its value cannot be read on the host."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    if backend == "jax":
        import jax

        return isinstance(tensor, jax.core.Tracer)
    return False
