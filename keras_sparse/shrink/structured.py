"""One-shot structured pruning: whole units (``prune_channels``) and whole
attention heads (``prune_heads``), ready for fine-tuning and ``shrink``.

Gradual structured pruning inside ``fit`` needs nothing new:
``ks.prune(model, s, pattern="channel", scorer="l2_norm", schedule=...)``
with the ``Pruning`` callback. These functions cover what a per-weight scorer
cannot see on its own: the BatchNorm that follows a layer (network
slimming), a gradient computed on a batch (Taylor), and attention heads,
which are not kernel entries.
"""

import keras
import numpy as np
from keras import ops

from keras_sparse import backend
from keras_sparse import patterns as patterns_lib
from keras_sparse import scorers as scorers_lib
from keras_sparse.checks import check_model
from keras_sparse.checks import describe
from keras_sparse.checks import type_error
from keras_sparse.convert import prune
from keras_sparse.convert import select_layers
from keras_sparse.layers.base import SparseMixin
from keras_sparse.layers.head_masked_attention import HeadMaskedMultiHeadAttention
from keras_sparse.ops.masks import check_sparsity
from keras_sparse.ops.masks import topk_mask
from keras_sparse.cloning import from_config_zero_init
from keras_sparse.cloning import restore_initializers
from keras_sparse.shrink.graph import Graph
from keras_sparse.shrink.graph import is_walkable_graph_model
from keras_sparse.utils import walk_layers

__all__ = ["prune_channels", "prune_heads", "head_scores"]


def _unit_layers(model, names):
    return [
        layer for layer in walk_layers(model)
        if isinstance(layer, SparseMixin) and layer.name in names and layer.pattern.removes_units
    ]


def _bound_copy(scorer, batchnorm):
    """A fresh scorer of the same class and config reading ``batchnorm``, so
    each pruned layer has its own."""
    return type(scorer).from_config(scorer.get_config()).bind(batchnorm)


def _following_batchnorm(model, layers, scorer):
    """``{layer name: BatchNormalization}`` for each layer whose output goes
    only into a channels-last BatchNormalization."""
    graph = Graph(model)
    found, missing = {}, []
    for layer in layers:
        nodes = [n for n in graph.nodes if n.layer is layer]
        bns = set()
        for node in nodes:
            consumers = graph.consumers(node.outputs[0])
            if len(consumers) == 1 and isinstance(consumers[0].layer, keras.layers.BatchNormalization):
                bn = consumers[0].layer
                if bn.axis in (-1, len(graph.tensors[node.outputs[0]].shape) - 1):
                    bns.add(bn)
                    continue
            bns.add(None)
        if len(bns) == 1 and None not in bns:
            found[layer.name] = bns.pop()
        else:
            missing.append(layer.name)
    if missing:
        raise ValueError(
            f"scorer={scorer!r} needs each pruned layer to feed one BatchNormalization "
            f"(channels last) directly; these do not: {missing}. Select layers with "
            f"`layers=`. Received: layers={[layer.name for layer in layers]}"
        )
    return found


def _gradients(model, sparsity, pattern, layers, distribution, data, loss):
    """Loss gradient of every selected layer's effective weights on one
    batch, through the gradient probe of a throw-away copy (one SGD step at
    learning rate 0)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            "A gradient scorer needs `data=(x, y)`, one batch with labels. "
            f"Received: data={type(data).__name__}"
        )
    if loss is None:
        loss = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
    if loss is None:
        raise ValueError("A gradient scorer needs `loss=` (or a compiled model). Received: loss=None")
    probe = prune(model, sparsity, pattern=pattern, layers=layers, distribution=distribution)
    probed = [layer for layer in walk_layers(probe) if isinstance(layer, SparseMixin)]
    for layer in probed:
        # No schedule: this single step must not update (or warn about) masks.
        layer.configure_pruning(None, layer.pattern, layer.scorer, False)
        layer.enable_gradient_probe()
    probe.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss=loss)
    probe.train_on_batch(*data)
    backend.sync_model_state(probe)
    return {
        layer.name: {n: ops.convert_to_numpy(layer.last_gradient(n)) for n in layer.sparse_weight_names}
        for layer in probed
    }


def prune_channels(model, sparsity, *, scorer="l1_norm", pattern="channel", layers=None,
                   distribution="uniform", data=None, loss=None):
    """Remove whole units (neurons, filters) now, with a group criterion.

    Converts the selected layers with ``ks.prune(..., pattern=pattern)``,
    scores their units and sets the masks at once. The masks then stay fixed
    (no schedule): fine-tune with a plain ``fit`` and call
    :func:`keras_sparse.shrink` to get the smaller model.

    Args:
        model: a Sequential or functional model.
        sparsity: fraction of units removed per layer, in ``[0, 1)``.
        scorer: ``"l1_norm"``, ``"l2_norm"``, ``"bn_gamma"`` (the following
            BatchNorm's ``|gamma|``; network slimming), ``"taylor_channel"``
            (``|g*w|`` summed per unit, needs ``data``) or any scorer.
            A scorer with ``reads_batchnorm`` is bound, per layer, to the
            BatchNormalization that follows it.
        pattern: a pattern that removes whole output units
            (``Pattern.removes_units``): ``"channel"`` (a unit's score is the
            sum of its entries' scores) or your own.
        layers: which layers (as in :func:`keras_sparse.prune`); never
            include the output layer (its units are the model's outputs).
        distribution: ``"uniform"`` or a dict ``name -> sparsity``.
        data: ``(x, y)``, one batch, for gradient scorers.
        loss: the loss for gradient scorers (default: the model's, if
            compiled).

    Returns:
        A new model of sparse layers with channel masks set.

    Example:
    >>> pruned = ks.prune_channels(model, 0.5, scorer="l2_norm", layers=["conv1", "conv2"])
    >>> pruned.compile(...); pruned.fit(x, y, epochs=2)
    >>> small = ks.shrink(pruned)
    """
    check_model(model)
    sparsity = check_sparsity(sparsity)
    scorer = scorers_lib.get(scorer)
    pattern = patterns_lib.get(pattern)
    if not pattern.removes_units:
        raise ValueError(
            "prune_channels needs a pattern that removes whole output units "
            f"(`removes_units`), such as 'channel'. Received: pattern={pattern!r}"
        )
    gradients = None
    if scorer.needs_gradient:
        gradients = _gradients(model, sparsity, pattern, layers, distribution, data, loss)
    pruned = prune(model, sparsity, pattern=pattern, scorer=scorer, layers=layers,
                   distribution=distribution)
    selected = {layer.name for layer in select_layers(model, layers)}
    targets = _unit_layers(pruned, selected)
    bns = _following_batchnorm(pruned, targets, scorer) if scorer.reads_batchnorm else {}
    for layer in targets:
        target = layer.schedule.target_sparsity if layer.schedule is not None else sparsity
        layer_scorer = _bound_copy(scorer, bns[layer.name]) if layer.name in bns else scorer
        for name in layer.sparse_weight_names:
            gradient = None if gradients is None else gradients[layer.name][name]
            scores = layer_scorer.score(layer.masked_latent(name), gradient)
            layer.set_mask(name, layer.compute_mask_for(name, target, scores))
        layer.configure_pruning(None, pattern, layer_scorer, False)
    return pruned


# -------------------------------------------------------------------- heads
def _is_attention(layer):
    return type(layer) in (keras.layers.MultiHeadAttention, HeadMaskedMultiHeadAttention)


def head_scores(layer, scorer="l1_norm"):
    """Importance of each head of a built MultiHeadAttention: the L1
    (``"l1_norm"``) or squared L2 (``"l2_norm"``) norm of all its weights
    (query, key, value and output projections)."""
    if scorer not in ("l1_norm", "l2_norm"):
        raise ValueError(
            f"Head scores are 'l1_norm' or 'l2_norm'. Received: scorer={scorer!r}"
        )
    power = 1 if scorer == "l1_norm" else 2
    total = np.zeros(layer.num_heads)
    for sub in (layer._query_dense, layer._key_dense, layer._value_dense):
        kernel = np.abs(ops.convert_to_numpy(sub.kernel)) ** power  # (dim, heads, size)
        total += kernel.sum(axis=(0, 2))
    output = np.abs(ops.convert_to_numpy(layer._output_dense.kernel)) ** power  # (heads, size, out)
    total += output.reshape(layer.num_heads, -1).sum(axis=1)
    return total


def _copy_attention(old, new):
    subs = lambda layer: [layer._query_dense, layer._key_dense, layer._value_dense,  # noqa: E731
                          layer._output_dense] + ([layer._gate_dense] if layer._use_gate else [])
    for a, b in zip(subs(old), subs(new)):
        b.set_weights(a.get_weights())
    if isinstance(old, HeadMaskedMultiHeadAttention):
        new.set_head_mask(ops.convert_to_numpy(old.head_mask))


def prune_heads(model, sparsity=None, *, heads=None, scorer="l1_norm", layers=None):
    """Remove whole attention heads of ``MultiHeadAttention`` layers.

    The selected layers become :class:`~keras_sparse.layers.HeadMaskedMultiHeadAttention`
    (same weights plus a head mask): a removed head adds exactly zero, in
    training too, so the model can be fine-tuned; :func:`keras_sparse.shrink`
    then rebuilds plain ``MultiHeadAttention`` layers with fewer heads.

    Args:
        model: a Sequential or functional model.
        sparsity: fraction of heads removed per layer (rounded to the
            nearest count; every layer keeps at least one head), chosen by
            ``scorer``.
        heads: instead of ``sparsity``, ``{layer name: [head indices]}`` to
            remove.
        scorer: ``"l1_norm"`` or ``"l2_norm"`` of each head's weights.
        layers: which attention layers (names, regex, callable); default all.

    Returns:
        A new model.

    Example:
    >>> pruned = ks.prune_heads(model, 0.5)
    >>> small = ks.shrink(pruned)
    """
    check_model(model)
    if not is_walkable_graph_model(model):
        raise ValueError(
            "prune_heads converts Sequential and functional models. "
            f"Received: model={describe(model)} of type {type(model).__name__}"
        )
    if (sparsity is None) == (heads is None):
        raise ValueError(
            "Pass exactly one of `sparsity` and `heads`. "
            f"Received: sparsity={sparsity!r}, heads={heads!r}"
        )
    if sparsity is not None:
        sparsity = check_sparsity(sparsity)
        if scorer not in ("l1_norm", "l2_norm"):
            raise ValueError(f"Head scores are 'l1_norm' or 'l2_norm'. Received: scorer={scorer!r}")
    selected = [layer for layer in select_layers(model, layers) if _is_attention(layer)]
    if not selected:
        raise ValueError(f"The model has no MultiHeadAttention layer to prune. Received: layers={layers!r}")
    plan = {}
    names = {layer.name: layer for layer in selected}
    if heads is not None:
        if not isinstance(heads, dict) or not all(
            isinstance(v, (list, tuple, set, range, np.ndarray)) for v in heads.values()
        ):
            raise type_error(
                "heads", heads, "a dict mapping attention layer names to lists of head indices"
            )
        if any(name not in names for name in heads):
            raise ValueError(
                f"`heads` must map attention layer names ({sorted(names)}) to head indices. "
                f"Received: heads={heads!r}"
            )
        for name, removed in heads.items():
            count = names[name].num_heads
            removed = list(removed)
            if any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or not 0 <= h < count
                   for h in removed):
                raise ValueError(
                    f"Head indices of {name!r} must be in [0, {count}). Received: heads={heads!r}"
                )
            mask = np.ones(count, dtype=bool)
            mask[removed] = False
            plan[name] = mask
    else:
        for layer in selected:
            count = layer.num_heads
            scores = head_scores(layer, scorer)
            if isinstance(layer, HeadMaskedMultiHeadAttention):
                scores = np.where(ops.convert_to_numpy(layer.head_mask), scores, -np.inf)
            # The mask functions' rules: at least one head kept, NaN scores
            # removed first, ties to the lower index.
            plan[layer.name] = np.asarray(topk_mask(np.asarray(scores, np.float32), sparsity))
    for name, mask in plan.items():
        layer = names[name]
        if isinstance(layer, HeadMaskedMultiHeadAttention):
            mask &= np.asarray(ops.convert_to_numpy(layer.head_mask), dtype=bool)

    def make_layer(layer):
        if layer.name in plan:
            config = keras.layers.MultiHeadAttention.get_config(layer)
            return from_config_zero_init(HeadMaskedMultiHeadAttention, config)
        return from_config_zero_init(layer.__class__, layer.get_config())

    pairs = []

    def clone_function(layer):
        new = make_layer(layer)
        pairs.append((layer, new))
        return new

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    for old, new in pairs:
        if old.built:
            if new.name in plan:
                _copy_attention(old, new)
                new.set_head_mask(plan[new.name])
            else:
                # Same class: same variables in the same order. A host copy,
                # so JAX buffers are not shared between the two models.
                new.set_weights([np.array(w) for w in old.get_weights()])
        restore_initializers(new)
    return clone
