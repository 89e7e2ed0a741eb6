"""Floor 4: plain Keras forms of the keras_sparse layers that are not masked
copies of a Keras layer, for :func:`keras_sparse.strip`.

Each form computes the same outputs as the layer it replaces and names
only Keras classes in its config:

- ``LowRankDense``: one ``Dense`` holding the effective kernel ``A @ B``
  (``factorized="dense"``), or a ``Sequential`` of ``Dense(rank,
  use_bias=False)`` then ``Dense(units)`` (``factorized="two_layers"``),
  which keeps the factors' size and the original order of operations.
- ``LowRankConv2D``: one ``Conv2D`` with the effective kernel, or a
  ``Sequential`` of a ``k x k`` ``Conv2D`` with ``rank`` filters and no bias
  followed by a ``Dense`` (channels last) or ``1 x 1`` ``Conv2D`` (channels
  first): the same operations the layer itself runs.
- ``ColumnSampledDense``: a ``Dense`` whose kernel is zero outside the
  sampled input rows.
- ``HeadMaskedMultiHeadAttention``: a ``MultiHeadAttention`` whose removed
  heads have zero query/key/value weights and zero output-projection rows.

Quantized factors and kernels are stored as their quantized float values.
"""

import keras
import numpy as np
from keras import ops

from keras_sparse.layers.column_sampled import ColumnSampledDense
from keras_sparse.layers.head_masked_attention import HeadMaskedMultiHeadAttention
from keras_sparse.layers.low_rank import LowRankConv2D
from keras_sparse.layers.low_rank import LowRankDense

__all__ = ["FACTORIZED_FORMS", "has_plain_form", "plain_form", "set_plain_weights",
           "strip_attention_in_place"]

FACTORIZED_FORMS = ("two_layers", "dense")

_PLAIN_FORM_TYPES = (LowRankDense, LowRankConv2D, ColumnSampledDense,
                     HeadMaskedMultiHeadAttention)

_SHARED_KEYS = ("activation", "use_bias", "kernel_initializer", "bias_initializer",
                "kernel_regularizer", "bias_regularizer", "kernel_constraint",
                "bias_constraint", "dtype", "trainable")

_CONV_KEYS = ("kernel_size", "strides", "padding", "data_format", "dilation_rate")


def has_plain_form(layer):
    """Whether :func:`plain_form` rebuilds ``layer`` as plain Keras."""
    return isinstance(layer, _PLAIN_FORM_TYPES)


def _shared(config):
    return {k: config[k] for k in _SHARED_KEYS if k in config}


def _np(value):
    return np.array(ops.convert_to_numpy(value))


def plain_form(layer, factorized):
    """A new, unbuilt plain Keras layer computing what ``layer`` computes.

    Args:
        layer: a layer for which :func:`has_plain_form` holds.
        factorized: ``"two_layers"`` or ``"dense"`` (low-rank layers only).

    Returns:
        A ``keras.layers.Layer`` (a ``keras.Sequential`` for a two-layer
        form) named like ``layer``; fill it with :func:`set_plain_weights`
        once built.
    """
    config = layer.get_config()
    shared = _shared(config)
    shared["activity_regularizer"] = keras.regularizers.serialize(layer.activity_regularizer)
    if isinstance(layer, HeadMaskedMultiHeadAttention):
        return keras.layers.MultiHeadAttention.from_config(config)
    if isinstance(layer, ColumnSampledDense):
        return keras.layers.Dense(config["units"], name=layer.name, **shared)
    if isinstance(layer, LowRankDense):
        if factorized == "dense":
            return keras.layers.Dense(config["units"], name=layer.name, **shared)
        first, second = _split(shared)
        return keras.Sequential(
            [keras.layers.Dense(layer.rank, name=f"{layer.name}_a", **first),
             keras.layers.Dense(config["units"], name=f"{layer.name}_b", **second)],
            name=layer.name,
        )
    conv = {k: config[k] for k in _CONV_KEYS}
    if factorized == "dense":
        return keras.layers.Conv2D(config["filters"], name=layer.name, **conv, **shared)
    first, second = _split(shared)
    if layer.data_format == "channels_last":
        tail = keras.layers.Dense(config["filters"], name=f"{layer.name}_b", **second)
    else:
        tail = keras.layers.Conv2D(config["filters"], 1, data_format=layer.data_format,
                                   name=f"{layer.name}_b", **second)
    return keras.Sequential(
        [keras.layers.Conv2D(layer.rank, name=f"{layer.name}_a", **conv, **first), tail],
        name=layer.name,
    )


def _split(shared):
    """Arguments of the two layers of a factorized form: the kernel
    arguments go to both, bias, activation and activity regularizer to the
    second only (the layer applies them once, at the end)."""
    first = {k: v for k, v in shared.items()
             if k in ("kernel_initializer", "kernel_regularizer", "kernel_constraint",
                      "dtype", "trainable")}
    first["use_bias"] = False
    return first, dict(shared)


def set_plain_weights(old, new):
    """Fill the built plain form ``new`` with ``old``'s effective weights.

    Args:
        old: the keras_sparse layer.
        new: its built :func:`plain_form`.
    """
    if isinstance(old, HeadMaskedMultiHeadAttention):
        _set_attention(old, new)
        return
    bias = [_np(old.bias)] if old.bias is not None else []
    if isinstance(old, ColumnSampledDense):
        new.set_weights([old.full_kernel()] + bias)
        return
    kernel_a, kernel_b = _np(old.factor("kernel_a")), _np(old.factor("kernel_b"))
    if isinstance(new, keras.Sequential):
        if isinstance(new.layers[1], keras.layers.Conv2D):
            kernel_b = kernel_b.reshape((1, 1) + kernel_b.shape)
        new.layers[0].set_weights([kernel_a])
        new.layers[1].set_weights([kernel_b] + bias)
        return
    new.set_weights([_np(old.kernel)] + bias)


def strip_attention_in_place(layer):
    """Turn a built ``HeadMaskedMultiHeadAttention`` into a plain
    ``MultiHeadAttention`` in place (for a subclassed model, which cannot be
    cloned): removed heads' weights are zeroed and ``head_mask`` dropped.

    Args:
        layer: a ``HeadMaskedMultiHeadAttention``.
    """
    if layer.built:
        _set_attention(layer, layer)
        layer._untrack_variable(layer.head_mask)
        layer.__dict__.pop("head_mask", None)
    layer.__class__ = keras.layers.MultiHeadAttention


def _set_attention(old, new):
    removed = [h for h in range(old.num_heads) if h not in set(old.kept_heads)]
    for name in ("_query_dense", "_key_dense", "_value_dense", "_output_dense"):
        source, target = getattr(old, name), getattr(new, name)
        values = [_np(v) for v in source.weights]
        for value in values:
            if name == "_output_dense":
                # kernel (heads, value_dim, out): a removed head adds nothing.
                if value.ndim == 3:
                    value[removed] = 0.0
            else:
                # kernel (in, heads, dim), bias (heads, dim).
                value[..., removed, :] = 0.0
        target.set_weights(values)
