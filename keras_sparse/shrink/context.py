"""The state of one :func:`keras_sparse.shrink` (:class:`_Context`):
constants, channel groups and keep flags during the analysis, new tensors
and layers during the rebuild. Rules call its methods.
"""

import keras
import numpy as np

from keras_sparse.cloning import from_config_zero_init
from keras_sparse.cloning import restore_initializers


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
