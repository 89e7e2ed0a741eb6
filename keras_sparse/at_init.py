"""Pruning at initialization, the parts below the public functions:
whole-model criteria (loss gradients for SNIP, the Hessian-gradient product
for GraSP, SynFlow's data-free synaptic flow, each computed with the
backend's autodiff inside ``keras.StatelessScope``, so no variable of the
model is modified), and the writing of the resulting masks through each
layer's ``write_mask`` (used by :func:`keras_sparse.prune_at_init` and by
:func:`keras_sparse.prune` for sparse initial masks).
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_sparse import backend
from keras_sparse.ops.masks import global_topk_masks
from keras_sparse.utils import walk_layers


def _stateless(fn, variables):
    """``fn`` as a function of the values of ``variables``."""

    def wrapped(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn()

    return wrapped


# ------------------------------------------------------------------ criteria
def weight_entries(layers):
    """``(layer, weight name)`` of every masked weight of ``layers``."""
    return [(layer, name) for layer in layers for name in layer.sparse_weight_names]


def loss_gradients(model, entries, batches, loss_fn):
    """Loss gradients with respect to the latent weights, averaged over
    ``batches`` (float32 numpy arrays)."""
    variables = [layer.latent_weight(name) for layer, name in entries]

    def loss_of(values, x, y):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return loss_fn(y, model(x, training=True))

    grad = backend.gradient_function(loss_of)
    values = [ops.convert_to_tensor(v) for v in variables]
    total = None
    for x, y in batches:
        grads = grad(values, ops.convert_to_tensor(x), ops.convert_to_tensor(y))
        grads = [np.asarray(ops.convert_to_numpy(g), dtype=np.float32) for g in grads]
        total = grads if total is None else [t + g for t, g in zip(total, grads)]
    return [t / len(batches) for t in total]


def grasp_scores(model, entries, batches, loss_fn):
    """``w ⊙ Hg`` (kept when high; GraSP removes the highest ``-w ⊙ Hg``)."""
    variables = [layer.latent_weight(name) for layer, name in entries]
    values = [ops.convert_to_tensor(v) for v in variables]
    g = loss_gradients(model, entries, batches, loss_fn)
    total = None
    for x, y in batches:

        def compute():
            return loss_fn(y, model(x, training=True))

        hg = backend.hessian_vector_product(_stateless(compute, variables), values, g)
        hg = [np.asarray(ops.convert_to_numpy(h), dtype=np.float32) for h in hg]
        total = hg if total is None else [t + h for t, h in zip(total, hg)]
    weights = [np.asarray(ops.convert_to_numpy(v), dtype=np.float32) for v in values]
    return [w * h / len(batches) for w, h in zip(weights, total)]


# Stand-alone activation layers (no ``activation`` attribute) that SynFlow
# bypasses; a Softmax at the output would otherwise make the summed output
# constant and every score 0.
_ACTIVATION_LAYERS = (
    keras.layers.ReLU,
    keras.layers.Softmax,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
)


def _identity_call(inputs, *args, **kwargs):
    return inputs


def linearize(model):
    """Replace each nonlinearity by the identity for SynFlow: ``activation``
    arguments and stand-alone activation layers (their ``call``). Returns
    ``(layer, attribute, saved)`` entries for :func:`restore`; ``saved`` is
    ``None`` for a ``call`` that came from the class."""
    swapped = []
    for layer in [model] + walk_layers(model):
        activation = getattr(layer, "activation", None)
        if callable(activation) and activation is not keras.activations.linear:
            swapped.append((layer, "activation", activation))
            layer.activation = keras.activations.linear
        elif isinstance(layer, _ACTIVATION_LAYERS):
            swapped.append((layer, "call", vars(layer).get("call")))
            layer.call = _identity_call
    return swapped


def restore(swapped):
    """Undo :func:`linearize` (``swapped`` is what it returned)."""
    for layer, attribute, saved in swapped:
        if saved is None:
            delattr(layer, attribute)
        else:
            setattr(layer, attribute, saved)


def _synflow_input(model, input_shape):
    if input_shape is None:
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise ValueError(
                "SynFlow needs the input shape of a model without symbolic inputs "
                "(subclassed): pass `input_shape=` (without the batch dimension). "
                "Received: input_shape=None"
            )
        shapes = [tuple(i.shape[1:]) for i in inputs]
    else:
        shapes = [tuple(input_shape)]
    ones = [ops.ones((1,) + s, dtype="float32") for s in shapes]
    return ones[0] if len(ones) == 1 else ones


def synflow_gradient(model, entries, input_shape):
    """A function ``masks -> scores``: ``|w| ⊙ ∂R/∂|w|`` with
    ``R = 1ᵀ f_|θ|(1)`` on the linearized network, for the given masks."""
    latents = [layer.latent_weight(name) for layer, name in entries]
    masks = [layer.get_mask(name) for layer, name in entries]
    skip = {id(v) for v in latents + masks}
    others = [
        v for v in model.trainable_variables + model.non_trainable_variables
        if id(v) not in skip and "float" in keras.backend.standardize_dtype(v.dtype)
    ]
    other_values = [ops.abs(ops.convert_to_tensor(v)) for v in others]
    x = _synflow_input(model, input_shape)

    def flow(values, mask_values):
        mapping = (
            list(zip(latents, values))
            + list(zip(masks, mask_values))
            + list(zip(others, other_values))
        )
        with keras.StatelessScope(state_mapping=mapping):
            return ops.sum(ops.cast(model(x, training=False), "float32"))

    grad = backend.gradient_function(flow)
    values = [ops.abs(ops.convert_to_tensor(v)) for v in latents]
    value_arrays = [np.asarray(ops.convert_to_numpy(v)) for v in values]

    def scores():
        current = [ops.convert_to_tensor(m) for m in masks]
        grads = grad(values, current)
        return [
            np.abs(v * np.asarray(ops.convert_to_numpy(g)))
            for v, g in zip(value_arrays, grads)
        ]

    return scores


# --------------------------------------------------------------------- masks
def _set_masks(entries, scores, targets, global_pruning, rescale):
    if global_pruning:
        masks = global_topk_masks(scores, targets[0])
    else:
        masks = [
            layer.compute_mask_for(name, target, ops.convert_to_tensor(score))
            for (layer, name), score, target in zip(entries, scores, targets)
        ]
    for (layer, name), mask in zip(entries, masks):
        layer.write_mask(name, mask, rescale=rescale)


def _apply_initial_masks(layers):
    updated = []
    for layer in layers:
        schedule = layer.schedule
        if (
            schedule is None
            or layer.global_pruning
            or layer.scorer.needs_gradient
            or not schedule.should_update(0)
        ):
            continue
        sparsity = schedule.sparsity(0)
        if sparsity <= 0.0:
            continue
        entries = weight_entries([layer])
        scores = [layer.score_weight(name) for _, name in entries]
        _set_masks(entries, scores, [sparsity] * len(entries), False,
                   rescale=layer.scorer.rescale_survivors)
        updated.append(layer)
    return updated


class InitContext:
    """What a :class:`keras_sparse.criteria.Criterion` reads and writes while
    pruning a fresh model: the pruned weights of ``entries`` (``(layer,
    weight name)`` pairs of ``model``), the data and loss when there are
    some, and the masks."""

    def __init__(self, model, entries, global_pruning, batches=None, loss_fn=None,
                 input_shape=None):
        self.model = model
        self.entries = entries
        self.global_pruning = global_pruning
        self._batches = batches
        self._loss_fn = loss_fn
        self._input_shape = input_shape

    def weights(self):
        """The masked latent weights, in the order of the entries."""
        return [layer.masked_latent(name) for layer, name in self.entries]

    def _needs_data(self, what):
        if self._batches is None:
            raise ValueError(
                f"{what} needs data and a loss: give the criterion `needs_data = True`. "
                "Received: data=None"
            )

    def loss_gradients(self):
        """Loss gradients of the latent weights (float32 numpy), averaged
        over the batches."""
        self._needs_data("loss_gradients()")
        return loss_gradients(self.model, self.entries, self._batches, self._loss_fn)

    def grasp_scores(self):
        """``w ⊙ Hg`` of each weight, averaged over the batches."""
        self._needs_data("grasp_scores()")
        return grasp_scores(self.model, self.entries, self._batches, self._loss_fn)

    def synflow_flow(self):
        """A function ``() -> scores``: SynFlow's ``|w| ⊙ ∂R/∂|w|`` for the
        current masks (call it inside :meth:`linearized`)."""
        return synflow_gradient(self.model, self.entries, self._input_shape)

    @contextlib.contextmanager
    def linearized(self):
        """Every nonlinearity of the model is the identity inside."""
        swapped = linearize(self.model)
        try:
            yield
        finally:
            restore(swapped)

    def set_masks(self, scores, targets, rescale=False):
        """Keep the highest ``scores`` of each weight at its target sparsity
        (one threshold for all with global pruning); ``rescale`` scales the
        survivors of each unit by ``sqrt(k_before / k_after)``."""
        _set_masks(self.entries, scores, targets, self.global_pruning, rescale)
