"""``ks.factorize``: replace trained ``Dense``/``Conv2D`` layers by low-rank
factors (truncated SVD), only where that lowers parameters and FLOPs.

A ``Dense`` kernel ``W`` ``(in, out)`` becomes ``A @ B`` with ``A = U_r
S_r^{1/2}`` and ``B = S_r^{1/2} V_r^T`` (:class:`~keras_sparse.layers.LowRankDense`);
a ``Conv2D`` kernel ``(kh, kw, in, out)`` is factored in its ``(kh*kw*in,
out)`` view into a ``k x k`` convolution with ``r`` filters and a ``1 x 1``
convolution (:class:`~keras_sparse.layers.LowRankConv2D`). By Eckart--Young
the factorization error is ``sqrt(sum of the discarded s_i^2)`` in
Frobenius norm, the smallest possible at that rank.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sparse.checks import check_bool
from keras_sparse.checks import check_int
from keras_sparse.checks import check_model
from keras_sparse.checks import check_number
from keras_sparse.checks import describe
from keras_sparse.cloning import clone_replacing
from keras_sparse.utils import kernel_layer_arguments
from keras_sparse import quantizers as quantizers_lib
from keras_sparse.convert import select_layers
from keras_sparse.layers.base import SparseMixin
from keras_sparse.layers.low_rank import LowRankConv2D
from keras_sparse.layers.low_rank import LowRankDense
from keras_sparse.ops import lowrank as lowrank_ops
from keras_sparse.cloning import from_config_zero_init
from keras_sparse.shrink.graph import is_walkable_graph_model

__all__ = ["factorize", "factorizable"]


def _plain_class(layer):
    return layer._keras_parent if isinstance(layer, SparseMixin) else type(layer)


def factorizable(layer):
    """Whether :func:`factorize` can convert ``layer`` (a built ``Dense``,
    ``Conv2D`` with ``groups=1``, or their sparse versions without an input
    quantizer)."""
    if not layer.built:
        return False
    if isinstance(layer, SparseMixin) and getattr(layer, "input_quantizer", None) is not None:
        return False
    if getattr(layer, "lora_enabled", False):
        return False
    plain = _plain_class(layer)
    if plain is keras.layers.Dense:
        return True
    return plain is keras.layers.Conv2D and getattr(layer, "groups", 1) == 1


def _weights(layer):
    if isinstance(layer, SparseMixin):
        weights = layer.stripped_weights()
    else:
        weights = [ops.convert_to_numpy(w) for w in layer.weights]
    kernel = np.asarray(weights[0], dtype="float32")
    bias = np.asarray(weights[1], dtype="float32") if layer.use_bias else None
    return kernel, bias


def _layer_rank(rank, name):
    if isinstance(rank, dict):
        return rank.get(name)
    return rank


def factorize(model, rank=None, energy=0.9, layers=None, kernel_quantizer=None, return_info=False):
    """Convert trained ``Dense``/``Conv2D`` layers to low-rank factors.

    For each selected layer the kernel's ``(fan_in, out)`` view is
    factored by truncated SVD. The rank is ``rank`` if given, else the
    smallest rank keeping a fraction ``energy`` of the squared singular
    values (:func:`keras_sparse.ops.lowrank.rank_for_energy`). A layer is
    converted only when ``rank * (fan_in + out) < fan_in * out``, i.e. when
    both its parameters and its FLOPs fall; the others are left as they are
    (``info`` says why).

    Args:
        model: a built Sequential or functional model (nested too).
        rank: an int for every layer, a dict ``name -> rank``, or ``None``
            (use ``energy``). An explicit rank must be ``< min(fan_in,
            out)``.
        energy: retained fraction of the spectral energy, in ``(0, 1]``.
        layers: which layers (names, regular expression, list, callable;
            see :func:`keras_sparse.prune`); default every Dense/Conv2D.
        kernel_quantizer: a :mod:`keras_sparse.quantizers` quantizer for
            the factors of the new layers.
        return_info: also return ``{layer name: dict(rank, fan_in, out,
            params_before, params_after, energy, error, status)}``.

    Returns:
        A new model (the input is untouched); with ``return_info``,
        ``(model, info)``.

    Raises:
        ValueError: for a bad ``rank``/``energy``, a selected layer that
            cannot be factorized, or a subclassed model.
        TypeError: for a ``model`` that is not a Keras model, or an argument
            of the wrong type (:class:`keras_sparse.checks.ArgumentTypeError`,
            also a ``ValueError``).

    Example:
    >>> small = ks.factorize(model, energy=0.9)
    >>> ks.report(small)
    """
    check_model(model)
    if not is_walkable_graph_model(model):
        raise ValueError(
            "factorize converts Sequential and functional models. "
            f"Received: model={describe(model)} of type {type(model).__name__}"
        )
    check_number(energy, "energy", minimum=0.0, maximum=1.0, low_open=True)
    if isinstance(rank, dict):
        for value in rank.values():
            if value is not None:
                check_int(value, "rank", minimum=1)
    elif rank is not None:
        check_int(rank, "rank", minimum=1)
    check_bool(return_info, "return_info")
    quantizer = quantizers_lib.get(kernel_quantizer, "kernel_quantizer")
    candidates = select_layers(model, layers)
    if layers is not None:
        bad = [f"{layer.name} ({type(layer).__name__})" for layer in candidates if not factorizable(layer)]
        if bad:
            raise ValueError(
                f"These layers cannot be factorized (Dense and Conv2D only): {bad}. "
                f"Received: layers={layers!r}"
            )
    if isinstance(rank, dict):
        names = {layer.name for layer in candidates}
        unknown = [name for name in rank if name not in names]
        if unknown:
            raise ValueError(f"`rank` names layers that are not selected: {unknown}. Received: rank={rank!r}")
    plan, info = {}, {}
    for layer in candidates:
        if not factorizable(layer):
            continue
        kernel, bias = _weights(layer)
        matrix = kernel.reshape(-1, kernel.shape[-1])
        fan_in, out = matrix.shape
        values = np.asarray(ops.convert_to_numpy(lowrank_ops.singular_values(matrix)), "float64")
        chosen = _layer_rank(rank, layer.name)
        if chosen is not None:
            chosen = lowrank_ops.check_rank(chosen, matrix.shape)
        else:
            chosen = lowrank_ops.rank_for_energy(values, energy)
        total = float(np.sum(values**2))
        row = dict(
            rank=chosen,
            fan_in=fan_in,
            out=out,
            params_before=fan_in * out,
            params_after=lowrank_ops.factor_params(fan_in, out, chosen),
            energy=float(np.sum(values[:chosen] ** 2) / total) if total else 1.0,
            error=float(math.sqrt(np.sum(values[chosen:] ** 2))),
        )
        if chosen >= min(fan_in, out) or row["params_after"] >= row["params_before"]:
            row["status"] = "skipped: no saving at this rank"
            row["params_after"] = row["params_before"]
        else:
            row["status"] = "factorized"
            a, b = lowrank_ops.lowrank_factors(matrix, chosen)
            a = ops.convert_to_numpy(a).reshape(kernel.shape[:-1] + (chosen,))
            plan[id(layer)] = (chosen, a, ops.convert_to_numpy(b), bias)
        info[layer.name] = row
    new_model = _rebuild(model, plan, quantizer)
    return (new_model, info) if return_info else new_model


def _low_rank_layer(layer, rank, quantizer):
    config, common = kernel_layer_arguments(layer)
    common.update(rank=rank, kernel_quantizer=quantizer)
    if _plain_class(layer) is keras.layers.Dense:
        return from_config_zero_init(LowRankDense, dict(common, units=config["units"]))
    return from_config_zero_init(
        LowRankConv2D,
        dict(
            common,
            filters=config["filters"],
            kernel_size=config["kernel_size"],
            strides=config["strides"],
            padding=config["padding"],
            data_format=config["data_format"],
            dilation_rate=config["dilation_rate"],
        ),
    )


def _rebuild(model, plan, quantizer):
    def make_layer(layer, row):
        return _low_rank_layer(layer, row[0], quantizer)

    def set_weights(new, row):
        _, a, b, bias = row
        new.set_factors(a, b, bias)

    clone, _ = clone_replacing(model, plan, make_layer, set_weights)
    return clone
