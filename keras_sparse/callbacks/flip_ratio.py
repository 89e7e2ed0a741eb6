"""Training diagnostics for binary networks: the flip ratio.

A binary weight only matters through its sign, so the useful measure of how
much a binary network is still learning is how many signs change
(Helwegen et al. 2019 use it to tune Bop's threshold). :class:`FlipRatio` is
a callback: it reads the weights between steps, which works the same on
every backend (a compiled metric would see stale weights on JAX, where
``fit`` keeps the live state outside the variables).
"""

import warnings

import keras
import numpy as np

from keras_sparse import backend
from keras_sparse.config import PACKAGE
from keras_sparse.layers.base import SparseMixin
from keras_sparse.optimizers import get_predicate
from keras_sparse.optimizers import is_binary_variable
from keras_sparse.optimizers import quantized_weights
from keras_sparse.utils import is_container, layer_labels, walk_layers

__all__ = ["FlipRatio", "flip_ratio", "signs"]


def signs(weight):
    """The sign pattern of ``weight`` as booleans, ``True`` for :math:`w \\ge 0`
    (the ``ste_sign`` convention: :math:`\\operatorname{sign}(0) = +1`)."""
    return np.asarray(keras.ops.convert_to_numpy(weight)) >= 0


def flip_ratio(before, after, mask=None):
    """Fraction of weights whose sign differs between ``before`` and ``after``.

    .. math::
        r = \\frac{\\#\\{i : m_i \\wedge \\operatorname{sign}(a_i) \\ne
            \\operatorname{sign}(b_i)\\}}{\\#\\{i : m_i\\}}

    with :math:`\\operatorname{sign}(0) = +1`. Pruned positions (``mask`` false)
    are left out of both counts.

    Args:
        before, after: weights of the same shape (tensors or arrays), or the
            boolean arrays :func:`signs` returns.
        mask: optional boolean array of the same shape; ``None`` counts every
            position.

    Returns:
        ``(flipped, counted)``: two Python ints (the ratio is their quotient;
        ``counted`` is 0 when every position is pruned).
    """
    before = before if _is_bool_array(before) else signs(before)
    after = after if _is_bool_array(after) else signs(after)
    if before.shape != after.shape:
        raise ValueError(
            f"`before` and `after` must have the same shape. Received: "
            f"before.shape={before.shape}, after.shape={after.shape}"
        )
    changed = before != after
    if mask is None:
        return int(np.count_nonzero(changed)), int(changed.size)
    mask = np.asarray(keras.ops.convert_to_numpy(mask)).astype(bool)
    if mask.shape != changed.shape:
        raise ValueError(
            f"`mask` must have the weights' shape {changed.shape}. "
            f"Received: mask.shape={mask.shape}"
        )
    return int(np.count_nonzero(changed & mask)), int(np.count_nonzero(mask))


def _is_bool_array(value):
    return isinstance(value, np.ndarray) and value.dtype == bool


_UPDATE_FREQS = ("epoch", "batch")


@keras.saving.register_keras_serializable(package=PACKAGE, name="FlipRatio")
class FlipRatio(keras.callbacks.Callback):
    """Log the fraction of binary weights that flipped sign.

    At the end of each epoch ``logs["flip_ratio"]`` is the fraction of all
    binary weights whose sign differs from the start of the epoch (a weight
    that flipped twice counts as unchanged), and
    ``logs["<layer>/flip_ratio"]`` the same per layer. With
    ``update_freq="batch"`` every batch's logs also get ``"flip_ratio"``: the
    fraction flipped by that step (Larq's per-step flip ratio; it reads the
    weights after every step, which costs a device-to-host copy per batch).
    The progress bar, ``CSVLogger`` and ``TensorBoard`` show the values with
    no extra code. Pruned positions are not counted.

    By default the watched weights are the latent kernels of the layers
    with a 1-bit ``kernel_quantizer`` (and any variable marked
    ``precision == 1``); ``predicate`` selects other trainable variables.

    Args:
        update_freq: ``"epoch"`` or ``"batch"``.
        log_per_layer: add per-layer ratios to the epoch logs.
        predicate: ``None`` (binary weights, as above), or which variables
            to watch: ``"binary"`` (marked variables only), a
            ``ks.optimizers.PathMatches`` or a callable ``variable -> bool``.

    Attributes:
        history: one dict per epoch, ``{"flip_ratio": r, "<layer>": r, ...}``.

    Example:
    >>> history = model.fit(x, y, epochs=10, callbacks=[ks.metrics.FlipRatio()])
    >>> history.history["flip_ratio"]
    """

    def __init__(self, update_freq="epoch", log_per_layer=True, predicate=None):
        super().__init__()
        if update_freq not in _UPDATE_FREQS:
            raise ValueError(
                f"`update_freq` must be one of {_UPDATE_FREQS}. "
                f"Received: update_freq={update_freq!r}"
            )
        if not isinstance(log_per_layer, bool):
            raise ValueError(
                f"`log_per_layer` must be a bool. Received: log_per_layer={log_per_layer!r}"
            )
        self.update_freq = update_freq
        self.log_per_layer = log_per_layer
        self.predicate = None if predicate is None else get_predicate(predicate)
        self.history = []
        self._entries = []
        self._epoch_signs = None
        self._batch_signs = None
        self._warned_empty = False

    def get_config(self):
        return {
            "update_freq": self.update_freq,
            "log_per_layer": self.log_per_layer,
            "predicate": (None if self.predicate is None
                          else keras.saving.serialize_keras_object(self.predicate)),
        }

    # ---------------------------------------------------------------- state
    def watched(self, model=None):
        """``(label, variable, mask or None)`` for every watched weight;
        ``label`` is the owning layer's name (its path through nested models
        where two share a name, see :func:`~keras_sparse.utils.layer_labels`)."""
        model = model if model is not None else self.model
        masks, owner = {}, {}
        for layer in walk_layers(model):
            if is_container(layer):
                continue
            if isinstance(layer, SparseMixin) and layer.built:
                for name in layer.sparse_weight_names:
                    masks[id(layer.latent_weight(name))] = getattr(layer, name + "_mask", None)
            # Layers are visited parents first: the innermost owner wins.
            for variable in layer.trainable_variables:
                owner[id(variable)] = layer
        if self.predicate is None:
            binary = {id(v) for _, _, v in quantized_weights(model, bits=1)}

            def accept(variable):
                return id(variable) in binary or is_binary_variable(variable)
        else:
            accept = self.predicate
        variables = [v for v in model.trainable_variables if accept(v)]
        owning = list({id(owner[id(v)]): owner[id(v)] for v in variables if id(v) in owner}.values())
        labels = dict(zip(map(id, owning), layer_labels(model, owning)))
        entries = []
        for variable in variables:
            layer = owner.get(id(variable))
            if layer is not None:
                label = labels[id(layer)]
            else:
                # "model/inner/layer/kernel" -> "inner/layer"
                parts = (getattr(variable, "path", None) or variable.name).split("/")
                label = "/".join(parts[1:-1]) or "/".join(parts[:-1]) or parts[0]
            entries.append((label, variable, masks.get(id(variable))))
        return entries

    def _snapshot(self):
        backend.sync_model_state(self.model)
        return [signs(variable) for _, variable, _ in self._entries]

    def _ratios(self, before, after):
        per_layer = {}
        for (label, _, mask), b, a in zip(self._entries, before, after):
            flipped, counted = flip_ratio(b, a, None if mask is None else mask)
            f, c = per_layer.get(label, (0, 0))
            per_layer[label] = (f + flipped, c + counted)
        flipped = sum(f for f, _ in per_layer.values())
        counted = sum(c for _, c in per_layer.values())
        overall = flipped / counted if counted else 0.0
        return overall, {k: (f / c if c else 0.0) for k, (f, c) in per_layer.items()}

    # ---------------------------------------------------------------- hooks
    def on_train_begin(self, logs=None):
        self._entries = self.watched()
        if not self._entries and not self._warned_empty:
            self._warned_empty = True
            warnings.warn(
                "FlipRatio: no trainable binary weight found"
                + ("" if self.predicate is None else f" (predicate {self.predicate!r})")
                + "; nothing to log.",
                stacklevel=2,
            )

    def on_epoch_begin(self, epoch, logs=None):
        if self._entries:
            self._epoch_signs = self._snapshot()
            self._batch_signs = self._epoch_signs

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq != "batch" or not self._entries:
            return
        now = self._snapshot()
        ratio, _ = self._ratios(self._batch_signs, now)
        self._batch_signs = now
        if logs is not None:
            logs["flip_ratio"] = ratio

    def on_epoch_end(self, epoch, logs=None):
        if not self._entries or self._epoch_signs is None:
            return
        ratio, per_layer = self._ratios(self._epoch_signs, self._snapshot())
        self.history.append({"flip_ratio": ratio, **per_layer})
        if logs is not None:
            logs["flip_ratio"] = ratio
            if self.log_per_layer:
                for label, value in per_layer.items():
                    logs[f"{label}/flip_ratio"] = value
