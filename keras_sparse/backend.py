"""The one place that knows which Keras backend is running.

Everything backend-specific (the JAX state sync, registering variables
added to built layers on torch, reading a step counter, fusing quantizer
kernels, compiling mask updates, autodiff of a scalar function for pruning
at initialization) lives here so the rest of the package is written with
``keras.ops`` only.

Mask updates run on the host by default: each masked weight is read once,
scored and thresholded with numpy (a SIMD sort) and written back with two
assignments: on a CPU the faster path at every kernel size (see
``benchmarks/pruning_overhead.py`` and the README). Compiled updates
(:func:`compile_update`: one traced function per group, score -> threshold
-> mask -> write, on TensorFlow) are kept for devices where host round
trips cost more: set ``KERAS_SPARSE_COMPILED_UPDATES=1`` before importing
the package, or ``keras_sparse.backend.COMPILED_UPDATES = True`` at run
time. Both give the same masks, bit for bit.
"""

import os

import keras
import numpy as np
from keras import ops

#: Whether mask updates may run as compiled functions (see
#: :func:`compile_update`); off by default, on with
#: ``KERAS_SPARSE_COMPILED_UPDATES=1``.
COMPILED_UPDATES = os.environ.get("KERAS_SPARSE_COMPILED_UPDATES", "0").strip().lower() in (
    "1", "true", "yes", "on")


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


def track_variables(model):
    """Make ``model`` and its sublayers see variables added to (or removed
    from) its layers after they were built: masks and quantizer state of a
    model converted in place, gradient probes.

    On torch, a built layer keeps a ``ParameterDict`` of its variables that
    ``zero_grad()`` walks before every training step; a variable added to a
    sublayer later is missing from the enclosing model's dict, so its
    gradient would add up over steps instead of being cleared. The dicts are
    rebuilt here. Nothing to do on the other backends.
    """
    if name() != "torch":
        return
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if hasattr(layer, "_torch_params"):
            layer._track_variables()


def tracks_parameters(layer):
    """Whether ``layer`` keeps the torch ``ParameterDict`` of its variables
    already (torch makes it when a layer is built or its parameters are
    first listed). Always ``False`` on the other backends."""
    return name() == "torch" and "_torch_params" in layer_attributes(layer)


def forget_parameters(layer):
    """Drop ``layer``'s torch ``ParameterDict`` (torch makes it again from
    the layer's variables when it is next needed): after a failed build the
    layer is as it was before, and variables added by the next build (bool
    masks too) are not pushed into a dict made for the failed one. Nothing
    to do on the other backends."""
    if tracks_parameters(layer):
        delattr(layer, "_torch_params")


def layer_attributes(layer):
    """The attributes set on ``layer``, as a dict. On torch a layer is a
    ``torch.nn.Module``, which keeps the sublayers set as attributes in its
    ``_modules`` rather than in ``__dict__``."""
    attributes = dict(vars(layer))
    attributes.update(getattr(layer, "_modules", None) or {})
    return attributes


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


def read(value):
    """``value`` as a plain backend tensor: a Keras variable is read (on
    TensorFlow ``keras.ops.convert_to_tensor`` returns the variable itself,
    which ``tf.custom_gradient`` would treat as a captured variable)."""
    if isinstance(value, keras.Variable):
        value = value.value
    if name() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(value)
    return ops.convert_to_tensor(value)


def host_read(variable):
    """The value of Keras variable ``variable`` as a numpy array, read
    eagerly with the fewest framework calls (mask updates on the host read
    every masked weight at each update)."""
    value = variable.value
    backend = name()
    if backend == "tensorflow":
        return value.numpy()
    if backend == "torch":
        return value.detach().cpu().numpy()
    return np.asarray(value)


def host_assign(variable, array):
    """Assign numpy ``array`` (of the variable's shape and dtype) to Keras
    variable ``variable`` eagerly: on TensorFlow straight to the underlying
    ``tf.Variable`` (a mirrored one under ``tf.distribute``, which assigns
    every replica), elsewhere through ``Variable.assign``."""
    if name() == "tensorflow":
        variable.value.assign(array)
    else:
        variable.assign(array)


def write_mask_and_select(mask_variable, latent_variable, mask, select_host):
    """Assign boolean numpy ``mask`` to ``mask_variable`` and set
    ``latent_variable`` to 0 where it is ``False`` (a select), eagerly. On
    TensorFlow the mask is converted once and the select runs on the device
    (faster than a host read and a write back, see
    ``benchmarks/pruning_overhead.py``); elsewhere the
    latent weight is read, selected on the host by ``select_host(mask,
    weights)`` and assigned."""
    if name() == "tensorflow":
        import tensorflow as tf

        value = tf.constant(mask)
        mask_variable.value.assign(value)
        latent = latent_variable.value
        latent.assign(tf.where(value, latent, tf.zeros((), latent.dtype)))
        return
    weights = host_read(latent_variable)
    host_assign(mask_variable, mask)
    host_assign(latent_variable, select_host(mask, weights))


def fuse(function):
    """``function`` (pure tensor math) compiled into fused kernels where the
    backend would otherwise run it op by op.

    On TensorFlow, an XLA-compiled ``tf.function``: ``fit`` on a CPU runs
    without XLA by default, so each elementwise op of a quantizer is its own
    pass over the kernel (``benchmarks/quant_overhead.py``),
    while XLA runs the forward and the gradient as one pass each. Variables
    read inside ``function`` are captured and receive gradients. Elsewhere
    ``function`` itself: ``jax.jit`` already fuses.
    """
    if name() != "tensorflow":
        return function
    import tensorflow as tf

    return tf.function(function, jit_compile=True, autograph=False)


def fusing():
    """Whether :func:`fuse` applies here: TensorFlow tracing a graph (a
    training or inference step). Eager calls (reports, exports, callbacks)
    run op by op and skip the XLA compilation."""
    if name() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.executing_eagerly()


#: Largest number of mask entries a compiled update handles on TensorFlow
#: (when :data:`COMPILED_UPDATES` is on). On a CPU each elementwise pass of
#: the traced radix select over a large kernel costs several times numpy's,
#: so larger groups stay on the host.
COMPILED_UPDATE_MAX_SIZE = 1 << 15


def compiles_updates(size=None):
    """Whether :func:`compile_update` compiles on this backend (and
    :data:`COMPILED_UPDATES` allows it), for an update of ``size`` mask
    entries when given."""
    if not COMPILED_UPDATES or name() != "tensorflow":
        return False
    return size is None or size <= COMPILED_UPDATE_MAX_SIZE


def compile_update(function):
    """``function`` (reads and assigns Keras variables, takes tensors) as one
    compiled function, or ``None`` where mask updates stay eager.

    On TensorFlow a ``tf.function``: a mask update inside ``fit`` is then one
    graph call queued behind the training step instead of a sequence of
    eager ops and host reads that wait for it. Callers pass what changes
    between updates (a sparsity, a count) as tensors of fixed shape and
    dtype, so one trace serves every update. On JAX and torch, ``None``: the
    eager update is used (a jitted JAX update would have to return new
    values for the caller to assign, and torch has no graph to queue).
    """
    if not compiles_updates():
        return None
    import tensorflow as tf

    return tf.function(function, autograph=False)


def tracing_count(compiled):
    """How many times ``compiled`` (from :func:`compile_update`) was traced."""
    return int(compiled.experimental_get_tracing_count())


# ------------------------------------------------------------------ autodiff
# Gradients of a scalar function of tensors (callers map variables to
# tensors with keras.StatelessScope): pruning at initialization.
def gradient_function(fn):
    """``grad(values, *aux)``: the gradient of scalar ``fn(values, *aux)``
    with respect to the list ``values`` (``aux`` is not differentiated). On
    JAX the function is compiled once and reused across calls."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        def grad(values, *aux):
            values = [tf.convert_to_tensor(v) for v in values]
            with tf.GradientTape() as tape:
                tape.watch(values)
                out = fn(values, *aux)
            return tape.gradient(out, values)

        return grad
    if backend == "jax":
        import jax

        compiled = jax.jit(jax.grad(fn))
        return lambda values, *aux: compiled(list(values), *aux)
    if backend == "torch":
        import torch

        def grad(values, *aux):
            values = [_torch_leaf(v) for v in values]
            return list(torch.autograd.grad(fn(values, *aux), values))

        return grad
    raise NotImplementedError(f"No autodiff for backend {backend!r}.")


def hessian_vector_product(fn, values, vectors):
    """``H v`` where ``H`` is the Hessian of scalar ``fn`` at ``values``."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        values = [tf.convert_to_tensor(v) for v in values]
        vectors = [tf.stop_gradient(tf.convert_to_tensor(v)) for v in vectors]
        with tf.GradientTape() as outer:
            outer.watch(values)
            with tf.GradientTape() as inner:
                inner.watch(values)
                out = fn(values)
            grads = inner.gradient(out, values)
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vectors)])
        return outer.gradient(dot, values)
    if backend == "jax":
        import jax

        def hvp(values, vectors):
            return jax.jvp(jax.grad(fn), (values,), (vectors,))[1]

        return jax.jit(hvp)(list(values), list(vectors))
    if backend == "torch":
        import torch

        values = [_torch_leaf(v) for v in values]
        vectors = [ops.convert_to_tensor(v).detach() for v in vectors]
        out = fn(values)
        grads = torch.autograd.grad(out, values, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vectors))
        return list(torch.autograd.grad(dot, values))
    raise NotImplementedError(f"No autodiff for backend {backend!r}.")


def _torch_leaf(value):
    """``value`` (a tensor or numpy array) as a fresh torch leaf tensor that
    records gradients."""
    return ops.convert_to_tensor(value).detach().clone().requires_grad_(True)
