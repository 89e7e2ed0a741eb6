"""``ks.shrink``: rebuild a pruned model with the removed units gone.

The analysis runs on the flat graph (:mod:`.graph`) with one rule per node
(:mod:`.rules`):

1. *constants* (forward): which channels of every tensor are the same value
   everywhere, and that value, computed from the effective (masked) weights;
2. *links* (union-find): channels that are kept or removed together;
3. *keep* (backward, to a fixed point): model outputs, layers the rules
   cannot shrink, and every non-constant input a kept unit reads with a
   non-zero weight are kept; everything else is removed;
4. *rebuild* (forward): each rule makes its smaller plain Keras layer,
   absorbing what removed channels contributed (see :mod:`.rules`).

The result is verified against the input model on random inputs before it
is returned.
"""

import warnings

import keras
import numpy as np
from keras import tree

from keras_sparse.layers.base import SparseMixin
from keras_sparse.shrink.fast_init import from_config_zero_init
from keras_sparse.shrink.fast_init import restore_initializers
from keras_sparse.shrink.graph import Graph
from keras_sparse.shrink.graph import is_graph_model
from keras_sparse.shrink.rules import AddRule
from keras_sparse.shrink.rules import AttentionRule
from keras_sparse.shrink.rules import BarrierRule
from keras_sparse.shrink.rules import rule_for

__all__ = ["shrink", "ShrinkInfo"]

#: Relative tolerance of the final output check (float32 arithmetic in a
#: different order, bias folding).
VERIFY_TOLERANCE = 1e-4


class ShrinkInfo:
    """What :func:`shrink` did.

    Attributes:
        layers: one dict per layer of the input model with ``name``,
            ``type``, ``units_before``, ``units_after`` (units, filters,
            channels or heads; ``None`` for layers without units) and
            ``status``: ``"shrunk"``, ``"removed"``, ``"removed
            (identity)"`` (a merge left with one input), ``"unchanged"`` or
            ``"kept whole"`` (a layer the rules cannot shrink: all its
            channels are kept).
        dropped_inputs: ``{input name: [feature indices]}`` removed from the
            model inputs (feed ``x[..., kept_inputs[name]]`` to the new model).
        kept_inputs: ``{input name: [feature indices]}`` the new inputs hold.
        offset_layers: names of the ``Rescaling`` layers added to put back
            the constant output of a removed residual branch.
        carriers: number of constant channels kept as carriers in front of
            ``same``-padded convolutions.
        params_before, params_after: parameter counts.
        not_shrunk: names of pruned layers left as they were (subclassed
            models: layers outside Sequential/functional sub-models).
        blocked: ``{layer name: count}`` of pruned units (all-zero weights)
            that had to be kept: a consumer needs the channel (a layer the
            rules cannot shrink, the other input of a residual ``Add``, a
            model output). Carriers are not counted.
        max_abs_diff: largest output difference measured by the check.
    """

    def __init__(self):
        self.layers = []
        self.dropped_inputs = {}
        self.kept_inputs = {}
        self.offset_layers = []
        self.carriers = 0
        self.params_before = 0
        self.params_after = 0
        self.not_shrunk = []
        self.blocked = {}
        self.max_abs_diff = None

    def to_dict(self):
        return dict(vars(self))

    def __str__(self):
        lines = [f"{'layer':<28}{'type':<24}{'units':>14}  status"]
        for row in self.layers:
            units = ""
            if row["units_before"] is not None:
                units = f"{row['units_before']} -> {row['units_after']}"
            lines.append(f"{row['name']:<28}{row['type']:<24}{units:>14}  {row['status']}")
        lines.append(f"parameters: {self.params_before:,} -> {self.params_after:,}")
        if self.dropped_inputs:
            lines.append(f"dropped input features: {self.dropped_inputs}")
        if self.offset_layers:
            lines.append(f"offset layers added: {self.offset_layers}")
        if self.not_shrunk:
            lines.append(f"pruned layers left as they were: {self.not_shrunk}")
        if self.blocked:
            lines.append(f"pruned units kept because a consumer needs them: {self.blocked}")
        return "\n".join(lines)

    __repr__ = __str__


class _Context:
    """State of one shrink: constants, channel groups, keep flags, and the
    new tensors during the rebuild. Rules call its methods."""

    def __init__(self, graph, drop_inputs):
        self.graph = graph
        self.drop_inputs = drop_inputs
        self.const = {}
        self.base, self.size = {}, {}
        total = 0
        for key, tensor in graph.tensors.items():
            self.base[key] = total
            self.size[key] = tensor.channels or 1
            total += self.size[key]
        self.parent = list(range(total))
        self.pinned = []
        self.carrier = {}
        self.extra_bias = {}
        self.offset_absorbed = set()
        self.changed = False
        # rebuild state
        self.values = {}
        self.materialized = {}
        self.layer_cache = {}
        self.used_names = set()
        self.info = None

    # ----------------------------------------------------------- constants
    def channels(self, key):
        return self.graph.tensors[key].channels

    def set_live(self, key):
        self.const[key] = np.full(self.size[key], np.nan)

    def set_const(self, key, values):
        values = np.asarray(values, dtype="float64").reshape(-1)
        if values.shape != (self.size[key],):
            raise RuntimeError(f"shrink: constant of shape {values.shape} for a tensor of "
                               f"{self.size[key]} channels (internal error).")
        self.const[key] = values

    # --------------------------------------------------------------- groups
    def _find(self, i):
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def link(self, key_a, index_a, key_b, index_b):
        base_a, base_b = self.base[key_a], self.base[key_b]
        for a, b in zip(np.asarray(index_a).tolist(), np.asarray(index_b).tolist()):
            ra, rb = self._find(base_a + a), self._find(base_b + b)
            if ra != rb:
                self.parent[max(ra, rb)] = min(ra, rb)

    def pin(self, key):
        self.pinned.extend(range(self.base[key], self.base[key] + self.size[key]))

    def finish_groups(self):
        self.roots = np.array([self._find(i) for i in range(len(self.parent))], dtype=np.int64)
        self.keep = np.zeros(len(self.parent), dtype=bool)
        if self.pinned:
            self.keep[self.roots[np.array(self.pinned)]] = True

    def keep_mask(self, key):
        base = self.base[key]
        return self.keep[self.roots[base:base + self.size[key]]]

    def mark(self, key, mask):
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        roots = self.roots[self.base[key] + np.nonzero(mask)[0]]
        fresh = roots[~self.keep[roots]]
        if fresh.size:
            self.keep[fresh] = True
            self.changed = True

    def need_carrier(self, key):
        """Keep one constant non-zero channel of ``key`` as the carrier of the
        removed constant channels (for a ``same``-padded convolution)."""
        if key in self.carrier:
            return
        values = self.const[key]
        candidates = np.nonzero(~np.isnan(values) & (np.nan_to_num(values) != 0))[0]
        kept = candidates[self.keep_mask(key)[candidates]]
        pool = kept if kept.size else candidates
        choice = int(pool[np.argmax(np.abs(values[pool]))])
        self.carrier[key] = choice
        self.mark(key, np.arange(self.size[key]) == choice)

    def kept(self, key):
        return np.nonzero(self.keep_mask(key))[0]

    # -------------------------------------------------------------- rebuild
    def tensor(self, key):
        return self.values[key][0]

    def offset(self, key):
        return self.values[key][1]

    def set_output(self, key, tensor, offset=None):
        if offset is None:
            offset = np.zeros(self.size[key])
        self.values[key] = (tensor, np.asarray(offset, dtype="float64"))

    def materialize(self, key):
        """The new tensor of ``key`` with its offset added back."""
        tensor, offset = self.values[key]
        kept = self.kept(key)
        if tensor is None or not np.any(offset[kept] != 0):
            return tensor
        if key not in self.materialized:
            producer = self.graph.producer(key)
            base = producer.layer.name if producer is not None else "input"
            name = self.unique_name(f"{base}_offset")
            layer = keras.layers.Rescaling(
                1.0, offset=[float(v) for v in offset[kept]], name=name
            )
            self.materialized[key] = layer(tensor)
            self.info.offset_layers.append(name)
        return self.materialized[key]

    def fill_args(self, node, replace=None):
        replace = replace or {}
        mapping = {}
        for kt, key in zip(node.keras_node.arguments.keras_tensors, node.inputs):
            mapping[id(kt)] = replace[key] if key in replace else self.materialize(key)
        return node.keras_node.arguments.fill_in(mapping)

    def unique_name(self, name):
        candidate, i = name, 1
        while candidate in self.used_names:
            candidate = f"{name}_{i}"
            i += 1
        self.used_names.add(candidate)
        return candidate

    def call_layer(self, node, cls, config, weights, args, kwargs, finish=None):
        cached = self.layer_cache.get(id(node.layer))
        if cached is not None:
            return cached(*args, **kwargs)
        if cls is None:
            new = _copy_operation(node.layer)
        else:
            config = dict(config)
            config["name"] = self.unique_name(config.get("name") or node.layer.name)
            try:
                new = from_config_zero_init(cls, config)
            except Exception as error:  # noqa: BLE001 - e.g. a Lambda that cannot be deserialized
                if node.layer.weights:
                    raise ValueError(
                        f"shrink cannot copy layer {node.layer.name!r} "
                        f"({type(node.layer).__name__}) from its config: {error}"
                    ) from error
                new = node.layer  # stateless: sharing it with the input model is harmless
        outputs = new(*args, **kwargs)
        if weights is not None and cls is not None:
            new.set_weights([np.asarray(w) for w in weights])
        if finish is not None:
            finish(new)
        restore_initializers(new)
        self.layer_cache[id(node.layer)] = new
        return outputs


def _copy_operation(operation):
    """A fresh copy of a raw ``keras.ops`` operation of a functional graph
    (so the input model's operations gain no nodes); the operation itself
    when it cannot be rebuilt from its config (it holds no state)."""
    try:
        return type(operation).from_config(operation.get_config())
    except Exception:  # noqa: BLE001 - fall back to sharing the stateless op
        return operation


# ------------------------------------------------------------------ analysis
def _analyse(graph, drop_inputs):
    ctx = _Context(graph, drop_inputs)
    for key in graph.input_keys:
        ctx.set_live(key)
    for node in graph.nodes:
        node.rule = rule_for(node, graph)
        node.rule.consts(ctx)
    for node in graph.nodes:
        node.rule.links(ctx)
        node.rule.pins(ctx)
    _link_shared_calls(ctx)
    for key in graph.output_keys:
        ctx.pin(key)
    for key in graph.input_keys:
        if not drop_inputs or graph.tensors[key].channels is None:
            ctx.pin(key)
    ctx.finish_groups()
    _propagate(ctx)
    for key in graph.input_keys:
        if not ctx.keep_mask(key).any():  # an unused input stays as it is
            ctx.mark(key, np.ones(ctx.size[key], dtype=bool))
    _propagate(ctx)
    _plan_offsets(ctx)
    return ctx


def _link_shared_calls(ctx):
    first = {}
    for node in ctx.graph.nodes:
        earlier = first.setdefault(id(node.layer), node)
        if earlier is node:
            continue
        for a, b in zip(earlier.inputs + earlier.outputs, node.inputs + node.outputs):
            if ctx.size[a] == ctx.size[b]:
                ctx.link(a, np.arange(ctx.size[a]), b, np.arange(ctx.size[b]))
            else:
                ctx.pin(a)
                ctx.pin(b)


def _propagate(ctx):
    nodes = ctx.graph.nodes[::-1]
    ctx.changed = True
    while ctx.changed:
        ctx.changed = False
        for node in nodes:
            node.rule.demand(ctx)


def _plan_offsets(ctx):
    """Fold the constant of a removed residual branch into the producer of
    another input of the ``Add`` when that producer is linear with a bias
    and feeds only the ``Add``; otherwise the offset travels on."""
    graph = ctx.graph
    for node in graph.nodes:
        rule = node.rule
        if not isinstance(rule, AddRule) or not rule.dropped:
            continue
        offset = rule.dropped_offset(ctx)
        if not np.any(offset[ctx.kept(node.outputs[0])] != 0):
            ctx.offset_absorbed.add(node.index)
            continue
        for key in rule.remaining:
            producer = graph.producer(key)
            tensor = graph.tensors[key]
            if (
                producer is not None
                and producer.rule.can_take_extra_bias()
                and len(tensor.consumers) == 1
                and not graph.is_output(key)
                and producer.index not in ctx.extra_bias
            ):
                ctx.extra_bias[producer.index] = offset
                ctx.offset_absorbed.add(node.index)
                break


# ------------------------------------------------------------------ rebuild
def _input_name(keras_tensor):
    history = getattr(keras_tensor, "_keras_history", None)
    if history is not None and history.operation is not None:
        return history.operation.name
    return keras_tensor.name


def _rebuild(ctx, model, info):
    graph = ctx.graph
    ctx.info = info
    new_inputs = []
    for key, kt in zip(graph.input_keys, tree.flatten(model.inputs)):
        tensor = graph.tensors[key]
        name = ctx.unique_name(_input_name(kt))
        shape = tuple(tensor.shape[1:])
        if tensor.channels is not None:
            kept = ctx.kept(key)
            shape = shape[:-1] + (len(kept),)
            info.kept_inputs[name] = kept.tolist()
            dropped = np.setdiff1d(np.arange(tensor.channels), kept)
            if dropped.size:
                info.dropped_inputs[name] = dropped.tolist()
        new = keras.Input(shape=shape, batch_size=tensor.shape[0], dtype=tensor.dtype, name=name)
        new_inputs.append(new)
        ctx.set_output(key, new)
    removed = set()
    for node in graph.nodes:
        if all(len(ctx.kept(k)) == 0 for k in node.outputs):
            removed.add(node.index)
            for key in node.outputs:
                ctx.set_output(key, None)
            continue
        node.rule.rebuild(ctx)
    outputs = [ctx.materialize(key) for key in graph.output_keys]
    inputs = _pack(getattr(model, "_inputs_struct", None), new_inputs)
    outputs = _pack(getattr(model, "_outputs_struct", None), outputs)
    new_model = keras.Model(inputs, outputs, name=model.name)
    _summarize(ctx, removed, info)
    return new_model


def _pack(struct, flat):
    if struct is not None:
        try:
            return tree.pack_sequence_as(struct, flat)
        except (ValueError, TypeError):
            pass
    return flat[0] if len(flat) == 1 else flat


def _summarize(ctx, removed, info):
    seen = set()
    for node in ctx.graph.nodes:
        if id(node.layer) in seen:
            continue
        seen.add(id(node.layer))
        rule = node.rule
        before = rule.units()
        after = None
        if before is not None:
            if isinstance(rule, AttentionRule):
                after = len(rule.heads) if node.index not in removed else 0
            else:
                after = 0 if node.index in removed else int(len(ctx.kept(node.outputs[0])))
        if node.index in removed:
            status = "removed"
        elif rule.became_identity:
            status = "removed (identity)"
        elif isinstance(rule, BarrierRule):
            status = "kept whole"
        elif before is not None and after != before:
            status = "shrunk"
        else:
            status = "unchanged"
        if isinstance(rule, AttentionRule) and after == 0 and node.index not in removed:
            after = 1  # a head is kept (with a zero output projection) to make the bias
        info.layers.append(dict(name=node.layer.name, type=type(node.layer).__name__,
                                units_before=before, units_after=after, status=status))
    info.carriers = len(ctx.carrier)
    carrier_roots = {
        int(ctx.roots[ctx.base[key] + channel]) for key, channel in ctx.carrier.items()
    }
    for node in ctx.graph.nodes:
        pruned = node.rule.pruned_units()
        if pruned is None or node.index in removed:
            continue
        key = node.outputs[0]
        roots = ctx.roots[ctx.base[key]:ctx.base[key] + ctx.size[key]]
        is_carrier = np.isin(roots, list(carrier_roots))
        stuck = pruned & ctx.keep_mask(key) & ~is_carrier
        if stuck.any():
            info.blocked[node.layer.name] = info.blocked.get(node.layer.name, 0) + int(stuck.sum())


# ------------------------------------------------------------- verification
def _random_inputs(model, rng):
    values = []
    for kt in tree.flatten(model.inputs):
        shape = tuple(2 if i == 0 else (d if d is not None else 5) for i, d in enumerate(kt.shape))
        if "int" in str(kt.dtype) or "bool" in str(kt.dtype):
            values.append(np.zeros(shape, dtype=kt.dtype))
        else:
            values.append(rng.standard_normal(shape).astype(kt.dtype))
    return values


def _as_list(outputs):
    return [np.asarray(keras.ops.convert_to_numpy(o), dtype="float64") for o in tree.flatten(outputs)]


def _call(model, values):
    inputs = values[0] if len(values) == 1 else values
    struct = getattr(model, "_inputs_struct", None)
    if struct is not None and not isinstance(model, keras.Sequential):
        inputs = tree.pack_sequence_as(struct, values)
    return _as_list(model(inputs, training=False))


def _verify(model, new_model, info, selections=None):
    rng = np.random.default_rng(0)
    values = _random_inputs(model, rng)
    reference = _call(model, values)
    if selections is not None:
        values = [v[..., s] if s is not None else v for v, s in zip(values, selections)]
    found = _call(new_model, values)
    worst = 0.0
    for ref, new in zip(reference, found):
        if ref.shape != new.shape:
            raise RuntimeError(
                f"shrink produced outputs of shape {new.shape} instead of {ref.shape} "
                "(internal error; the input model is unchanged)."
            )
        diff = float(np.max(np.abs(ref - new))) if ref.size else 0.0
        scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
        if not diff <= VERIFY_TOLERANCE * scale:
            raise RuntimeError(
                f"shrink produced a model whose outputs differ from the input model's by "
                f"{diff:.3g} on random inputs; it is not returned (please report this)."
            )
        worst = max(worst, diff)
    info.max_abs_diff = worst


# --------------------------------------------------------------- entry point
def _count_params(model):
    """Parameters of the plain model (masks and probes of sparse layers are
    not counted: they go away with ``strip``)."""
    from keras_sparse.utils import walk_layers

    auxiliary = set()
    for layer in walk_layers(model):
        if isinstance(layer, SparseMixin) and layer.built:
            auxiliary.update(id(v) for v in layer.auxiliary_variables())
    return int(sum(np.prod(v.shape) for v in model.weights if id(v) not in auxiliary))


def _shrink_graph(model, drop_inputs, verify, strict=False):
    info = ShrinkInfo()
    graph = Graph(model)
    ctx = _analyse(graph, drop_inputs)
    new_model = _rebuild(ctx, model, info)
    if strict and info.blocked:
        whole = [row["name"] for row in info.layers if row["status"] == "kept whole"]
        raise ValueError(
            f"shrink cannot remove every pruned unit (strict=True): {info.blocked} "
            f"(layer: units kept). A consumer needs those channels: a layer shrink cannot "
            f"follow (here: {whole or 'none'}), the other input of a residual Add, or a "
            f"model output. Received: strict={strict}"
        )
    info.params_before = _count_params(model)
    info.params_after = _count_params(new_model)
    if verify:
        selections = [
            np.asarray(info.kept_inputs[name]) if name in info.kept_inputs else None
            for name in [_input_name(kt) for kt in tree.flatten(new_model.inputs)]
        ]
        _verify(model, new_model, info, selections)
    return new_model, info


def shrink(model, *, drop_inputs=True, verify=True, strict=False, return_info=False):
    """Rebuild ``model`` with its pruned units, filters, channels and
    attention heads physically removed.

    Follows the graph through Dense, Conv1D/2D/3D, DepthwiseConv,
    SeparableConv, BatchNormalization, activations, Dropout, pooling, global
    pooling, Flatten/Reshape (channel indices expanded through the flatten),
    ZeroPadding/Cropping/UpSampling, residual ``Add`` (the union of the
    channels its inputs need), ``Concatenate`` (offsets), other merges,
    Embedding, MultiHeadAttention (heads), and this package's
    ``LowRankDense``/``LowRankConv2D``/``ColumnSampledDense``. Sparse layers
    are read through their masks, as in the forward pass. Any other layer
    is kept whole (all its channels) and copied.

    What is removed: a unit (a layer's output channel) that no kept layer
    reads with a non-zero weight, or that is *constant* (a unit whose
    kernel column is pruned outputs ``act(bias)`` everywhere). A constant
    unit's contribution is folded into the next layer's bias, so outputs are
    unchanged (not approximately: the check below holds them to float32
    rounding). In front of a ``same``-padded convolution one constant channel
    per tensor is kept as a carrier for the others (zero padding makes a
    constant input non-uniform at the borders). A layer with no unit left is
    removed; a residual branch whose output is constant becomes the
    identity (its constant is folded into a neighbouring bias, or added back
    with a ``Rescaling(1.0, offset=...)`` layer when there is none).

    Args:
        model: a built Sequential or functional model (nested sub-models are
            inlined), or a subclassed model: then only the Sequential and
            functional models it holds as attributes are shrunk (their
            inputs and outputs unchanged); the result is a new instance of
            its class (``cls.from_config(model.get_config())``, so
            ``__init__`` must accept its config) whose other layers hold the
            stripped weights of ``model``; pruned layers outside sub-models
            are listed in ``info.not_shrunk``.
        drop_inputs: also remove model input features no kept layer reads
            (e.g. after :func:`keras_sparse.sample_columns`); the new model
            then takes ``x[..., info.kept_inputs[name]]`` and a warning
            names the dropped features. ``False`` keeps the input shapes.
        verify: run both models on random inputs and raise ``RuntimeError``
            rather than return a model whose outputs differ.
        strict: raise ``ValueError`` if a pruned unit (all-zero weights)
            cannot be removed because the graph cannot be followed through
            one of its consumers (``info.blocked`` lists them otherwise).
        return_info: also return a :class:`ShrinkInfo`.

    Returns:
        A new, uncompiled functional model of plain Keras layers (only this
        package's low-rank layers stay themselves) that saves and loads as a
        plain ``.keras`` file; with ``return_info=True``, ``(model, info)``.
        The input model is never modified.

    Raises:
        ValueError: for an unbuilt model, a subclassed model that cannot be
            copied, or (``strict=True``) pruned units that cannot be removed.

    Example:
    >>> pruned = ks.prune(model, 0.5, pattern="channel", layers=["conv1", "dense1"])
    >>> pruned.fit(x, y, callbacks=[ks.callbacks.Pruning()])
    >>> small = ks.shrink(pruned)
    >>> small.count_params() < model.count_params()
    True
    """
    for name, value in (("drop_inputs", drop_inputs), ("verify", verify), ("strict", strict)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
    if is_graph_model(model):
        new_model, info = _shrink_graph(model, drop_inputs, verify, strict)
    elif isinstance(model, keras.Model):
        new_model, info = _shrink_subclassed(model, verify, strict)
    else:
        raise ValueError(
            f"shrink needs a Keras model. Received: model={type(model).__name__}"
        )
    if info.dropped_inputs and not return_info:
        warnings.warn(
            f"shrink removed input features no layer reads: {info.dropped_inputs}. The new "
            f"model takes only the kept features ({ {k: len(v) for k, v in info.kept_inputs.items()} }); "
            "pass drop_inputs=False to keep the input shape, or return_info=True for the indices.",
            stacklevel=2,
        )
    return (new_model, info) if return_info else new_model


# --------------------------------------------------------------- subclassed
def _fresh_instance(model):
    """A new instance of ``model``'s class from its config, built on the
    input shape ``model`` was built with (plain Keras layers inside, as the
    class defines them)."""
    cls = type(model)
    shape = _build_input_shape(model)
    if shape is None:
        raise ValueError(
            f"shrink needs the subclassed model {model.name!r} built on one input of known "
            "shape (call it on a batch first)."
        )
    try:
        with keras.saving.custom_object_scope({cls.__name__: cls}):
            fresh = cls.from_config(model.get_config())
        fresh(np.zeros((1,) + tuple(d or 1 for d in shape[1:]), dtype="float32"))
    except Exception as error:  # noqa: BLE001 - any failure means "cannot copy"
        raise ValueError(
            f"shrink cannot copy the subclassed model {model.name!r} without modifying it: "
            f"{cls.__name__}.__init__ must accept the arguments of its get_config() "
            f"(Keras serialization). Original error: {error}"
        ) from error
    return fresh


def _graph_children(model):
    """``(container, key, sub-model)`` for each Sequential/functional model
    held directly by ``model`` (attribute, or item of a list attribute)."""
    found = []
    for name, value in list(vars(model).items()):
        if name.startswith("_"):
            continue
        if is_graph_model(value):
            found.append((model, name, value))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if is_graph_model(item):
                    found.append((value, i, item))
    return found


def _outside_layers(model, children):
    from keras_sparse.utils import walk_layers

    inside = set()
    for _, _, child in children:
        inside.add(id(child))
        inside.update(id(layer) for layer in walk_layers(child))
    return [layer for layer in walk_layers(model) if id(layer) not in inside]


def _plain_weights(layer):
    if isinstance(layer, SparseMixin):
        return [np.asarray(w) for w in layer.stripped_weights()]
    return [np.array(keras.ops.convert_to_numpy(w)) for w in layer.weights]


def _shrink_subclassed(model, verify, strict):
    """Shrink the Sequential/functional sub-models of a subclassed model.

    The result is a fresh instance of the model's class (from its config):
    its sub-models are replaced by the shrunk ones, and every other layer
    gets the (stripped) weights of the matching layer of ``model``, which is
    never modified."""
    if not model.built:
        raise ValueError(f"Model {model.name!r} must be built before shrinking.")
    info = ShrinkInfo()
    info.params_before = _count_params(model)
    fresh = _fresh_instance(model)
    old_children = _graph_children(model)
    new_children = _graph_children(fresh)
    if [(k, c.name) for _, k, c in old_children] != [(k, c.name) for _, k, c in new_children]:
        raise ValueError(
            f"shrink cannot match the sub-models of {model.name!r} with a fresh instance of "
            f"{type(model).__name__} (they are created differently)."
        )
    old_rest = _outside_layers(model, old_children)
    new_rest = _outside_layers(fresh, new_children)
    if len(old_rest) != len(new_rest):
        raise ValueError(
            f"shrink cannot match the layers of {model.name!r} with a fresh instance of "
            f"{type(model).__name__}."
        )
    for old, new in zip(old_rest, new_rest):
        values = _plain_weights(old)
        if [v.shape for v in values] != [tuple(w.shape) for w in new.weights]:
            raise ValueError(
                f"shrink cannot match layer {old.name!r} of {model.name!r} with a fresh "
                f"instance of {type(model).__name__}."
            )
        new.set_weights(values)
    for (_, _, old_child), (container, key, new_child) in zip(old_children, new_children):
        small, child_info = _shrink_graph(old_child, drop_inputs=False, verify=verify, strict=strict)
        info.layers.extend(child_info.layers)
        info.offset_layers.extend(child_info.offset_layers)
        info.carriers += child_info.carriers
        info.blocked.update(child_info.blocked)
        if isinstance(container, list):
            list.__setitem__(container, key, small)
        else:
            object.__setattr__(container, key, small)
        fresh._tracker.replace_tracked_value("layers", new_child, small)
    info.not_shrunk = [
        layer.name for layer in old_rest
        if isinstance(layer, SparseMixin) and layer.built and layer.sparsity > 0
    ]
    info.params_after = _count_params(fresh)
    if verify:
        shape = _build_input_shape(model)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2,) + tuple(d or 5 for d in shape[1:])).astype("float32")
        reference = _as_list(model(x, training=False))
        found = _as_list(fresh(x, training=False))
        info.max_abs_diff = 0.0
        for a, b in zip(reference, found):
            diff = float(np.max(np.abs(a - b)))
            if not diff <= VERIFY_TOLERANCE * max(1.0, float(np.max(np.abs(a)))):
                raise RuntimeError(
                    f"shrink produced a model whose outputs differ by {diff:.3g}; it is not "
                    "returned (please report this)."
                )
            info.max_abs_diff = max(info.max_abs_diff, diff)
    return fresh, info


def _build_input_shape(model):
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if isinstance(shape, (tuple, list)) and all(d is None or isinstance(d, int) for d in shape):
            return tuple(shape)
    return None
