"""Gradient probes and optimizer state, for callbacks that change a model's
variables during ``fit``.

``fit`` builds the optimizer (on JAX) and the train function before any
callback runs, so a callback that adds gradient probes must also register
them with the optimizer and remake the train function. Keras optimizers
cannot take new variables once built, so :func:`add_gradient_probes`
rebuilds the optimizer from its config on the new variable list and copies
every existing slot by its (stable) variable path: no optimizer state is
lost, and a freshly compiled model loses nothing at all.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sparse import backend

__all__ = [
    "add_gradient_probes",
    "remove_gradient_probes",
    "rebuild_optimizer",
    "optimizer_slots",
    "reset_optimizer_slots",
]


#: Largest weight (number of entries) whose optimizer slots
#: :func:`reset_optimizer_slots` zeroes on the host. Measured on TensorFlow/CPU:
#: for a 300 x 100 slot a host read-multiply-write takes about half the time of
#: an eager multiply and assign; for 1024 x 1024 the device path is about 2x
#: faster.
HOST_RESET_MAX_SIZE = 2**16


def _inner(optimizer):
    # LossScaleOptimizer (mixed precision) keeps the slots in its inner one.
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    return optimizer


def _knows(optimizer, variable):
    optimizer = _inner(optimizer)
    return optimizer._var_key(variable) in optimizer._trainable_variables_indices


def rebuild_optimizer(model):
    """Replace ``model.optimizer`` by a copy built on the model's current
    trainable variables, carrying over every optimizer variable whose path
    matches (iterations, learning rate, moments of existing weights).

    Returns the new optimizer (the old one is left as it was).
    """
    old = model.optimizer
    new = old.__class__.from_config(old.get_config())
    strategy = getattr(model, "distribute_strategy", None)
    scope = strategy.scope() if strategy is not None else _null_scope()
    with scope:
        new.build(model.trainable_variables)
    previous = {v.path: v for v in old.variables}
    for variable in new.variables:
        source = previous.get(variable.path)
        if source is not None and tuple(source.shape) == tuple(variable.shape):
            # A host copy: on JAX the two variables would otherwise share a
            # buffer that the next train step donates.
            variable.assign(np.array(ops.convert_to_numpy(source)))
    model.optimizer = new
    return new


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def add_gradient_probes(model, layers):
    """Give every layer in ``layers`` a gradient probe (see
    ``SparseMixin.enable_gradient_probe``) and make ``fit`` use them.

    Call from ``on_train_begin``: registers the probes with a built
    optimizer (by rebuilding it, see :func:`rebuild_optimizer`) and remakes
    the train function. Returns whether anything changed.
    """
    backend.sync_model_state(model)
    added = False
    strategy = getattr(model, "distribute_strategy", None)
    # Variables made during fit must belong to the model's strategy, also
    # when fit was called outside its scope.
    with strategy.scope() if strategy is not None else _null_scope():
        for layer in layers:
            if not layer.has_gradient_probe:
                layer.enable_gradient_probe()
                added = True
    if added:
        backend.track_variables(model)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and _inner(optimizer).built:
        probes = [
            getattr(layer, name + "_probe")
            for layer in layers
            for name in layer.sparse_weight_names
        ]
        if not all(_knows(optimizer, p) for p in probes):
            rebuild_optimizer(model)
            added = True
    if added and getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)
    return added


def remove_gradient_probes(model, layers):
    """Remove the gradient probes of ``layers`` and make the model and its
    optimizer as they were without them.

    Call from ``on_train_end`` (after the final state sync): a model saved
    afterwards has exactly the variables of a model that never had probes,
    so it loads into a fresh ``ks.prune`` model or with
    ``keras.saving.load_model``. Returns whether anything changed.
    """
    backend.sync_model_state(model)
    removed = False
    for layer in layers:
        removed = layer.disable_gradient_probe() or removed
    if not removed:
        return False
    backend.track_variables(model)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and _inner(optimizer).built:
        rebuild_optimizer(model)
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)
    return True


def optimizer_slots(optimizer, variable):
    """The optimizer variables that belong to ``variable``, elementwise
    (Adam's m and v, SGD momentum, RMSprop's averages, EMA copies, gradient
    accumulators, ...). Empty if the optimizer is not built or keeps none.

    A slot is found in the optimizer's per-variable lists at the variable's
    index, with the variable's shape and a name derived from its path (how
    every Keras optimizer names slots).
    """
    optimizer = _inner(optimizer)
    if optimizer is None or not optimizer.built or not _knows(optimizer, variable):
        return []
    index = optimizer._get_variable_index(variable)
    count = len(optimizer._trainable_variables)
    prefix = variable.path.replace("/", "_")
    shape = tuple(variable.shape)
    slots, seen = [], set()
    for attr, value in vars(optimizer).items():
        if attr in ("_trainable_variables", "_variables"):
            continue
        if not isinstance(value, (list, tuple)) or len(value) != count:
            continue
        slot = value[index]
        if (
            isinstance(slot, keras.Variable)
            and slot is not variable
            and id(slot) not in seen
            and tuple(slot.shape) == shape
            and prefix in slot.path.replace("/", "_")
        ):
            seen.add(id(slot))
            slots.append(slot)
    return slots


def reset_optimizer_slots(optimizer, variable, keep, slots=None):
    """Zero every slot of ``variable`` where ``keep`` is ``False``.

    ``slots``: the result of :func:`optimizer_slots` for this optimizer and
    variable, if the caller kept it (the lookup scans the optimizer).
    Returns the slots touched.
    """
    if slots is None:
        slots = optimizer_slots(optimizer, variable)
    if not slots:
        return slots
    size = math.prod(tuple(variable.shape))
    if size <= HOST_RESET_MAX_SIZE:
        # Small weights: on the host, one read and one write per slot (an
        # eager multiply costs more than the arithmetic here); the result is
        # a fresh array, so no buffer is shared with the variable on JAX.
        keep = np.asarray(ops.convert_to_numpy(keep)).astype(bool)
        for slot in slots:
            value = np.asarray(ops.convert_to_numpy(slot))
            slot.assign(value * keep.astype(value.dtype))
        return slots
    # Large weights: on the device (multi-threaded), one cast per dtype.
    keep = ops.convert_to_tensor(keep)
    factors = {}
    for slot in slots:
        if slot.dtype not in factors:
            factors[slot.dtype] = ops.cast(keep, slot.dtype)
        slot.assign(ops.multiply(slot, factors[slot.dtype]))
    return slots
