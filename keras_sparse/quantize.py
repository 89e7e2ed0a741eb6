"""Floor 4: ``ks.quantize`` converts an existing model to quantization-aware
training (binary, ternary or k-bit weights and activations).

It uses the same conversion machinery as ``ks.prune``
(:func:`keras_sparse.convert.convert`): Sequential and functional models are
cloned with their weights, subclassed models are converted in place. The
converted layers are the sparse layer family with a ``kernel_quantizer``
(and an ``input_quantizer`` when ``activations`` is given), so pruning and
quantization compose in either order.
"""

import warnings

import keras
import numpy as np

from keras_sparse import quantizers as quantizers_lib
from keras_sparse.checks import check_bool
from keras_sparse.checks import check_int
from keras_sparse.checks import check_model
from keras_sparse.checks import type_error
from keras_sparse.convert import convert
from keras_sparse.selection import has_kernel_like_weights
from keras_sparse.selection import leaf_layers
from keras_sparse.selection import select_layers
from keras_sparse.selection import split_convertible
from keras_sparse.selection import supports
from keras_sparse.selection import warn_or_raise_unsupported

__all__ = ["quantize", "calibrate"]


def _explicit_names(model, layers):
    """Names the user listed explicitly (not a pattern or a callable)."""
    if isinstance(layers, (list, tuple, set, dict)):
        return set(layers)
    if isinstance(layers, str) and layers in {layer.name for layer in leaf_layers(model)}:
        return {layers}
    return set()


def quantize(
    model,
    weights,
    activations=None,
    *,
    layers=None,
    skip_first=False,
    skip_last=False,
    strict=False,
):
    """Make the supported layers of ``model`` quantization-aware.

    The latent float weights are kept and trained; the forward pass uses
    ``mask * weights_quantizer(latent)`` and, with ``activations``, quantized
    layer inputs. Learnable quantizer state (an LSQ step) is initialized
    from the model's current weights.

    Args:
        model: a Sequential, functional (possibly nested) or subclassed model.
        weights: the weight quantizer: ``"binary"`` (``SteSign``: ±1),
            ``"ternary"`` (TWN: ``SteTern(ternary_weight_networks=True,
            scaled=True)``), an int number of bits (1 -> ``SteSign``, 2-8 ->
            ``Uniform(bits)``), any :mod:`keras_sparse.quantizers` alias or
            instance, or ``None`` (weights stay float).
        activations: the input quantizer of each converted layer (same
            forms), or ``None``. Layers with integer inputs (``Embedding``)
            never get one.
        layers: which layers to quantize: a name, a regular expression, a
            list of names, a dict whose keys are names, or a callable
            ``layer -> bool``. Listing by name a layer that has no kernel
            (``BatchNormalization``, ...) raises ``ValueError``.
        skip_first: leave the first selected layer in float (weights and
            inputs), a common practice for binary and low-bit networks.
        skip_last: leave the last selected layer in float.
        strict: raise instead of warning when a selected layer with a
            kernel has no counterpart in the layer family.

    Returns:
        For Sequential/functional models a new model with the same weights
        (compiled with the input's compile config if the input was
        compiled); a subclassed model is converted in place and returned
        (compile it again before ``fit``). Already-converted layers keep
        their pruning settings and get the new quantizers.

    Raises:
        ValueError: for an invalid argument; the model is left untouched.
        TypeError: for a ``model`` that is not a Keras model, or an argument
            of the wrong type (:class:`keras_sparse.checks.ArgumentTypeError`,
            also a ``ValueError``).

    Example:
    >>> model = ks.quantize(model, "binary", activations="ste_sign", skip_first=True)
    >>> model = ks.quantize(model, 8)            # 8-bit weights
    >>> model = ks.prune(ks.quantize(model, 4), 0.8)   # compose with pruning
    """
    check_model(model)
    weight_quantizer = quantizers_lib.get(weights, "weights")
    input_quantizer = quantizers_lib.get(activations, "activations")
    if weight_quantizer is None and input_quantizer is None:
        raise ValueError(
            "Give a `weights` or an `activations` quantizer. "
            f"Received: weights={weights!r}, activations={activations!r}"
        )
    check_bool(skip_first, "skip_first")
    check_bool(skip_last, "skip_last")
    check_bool(strict, "strict")

    selected = select_layers(model, layers)
    explicit = _explicit_names(model, layers)
    without_kernel = [
        layer.name for layer in selected
        if layer.name in explicit and not supports(layer) and not has_kernel_like_weights(layer)
    ]
    if without_kernel:
        raise ValueError(
            f"Layers {without_kernel} have no kernel to quantize. "
            f"Received: layers={layers!r}"
        )
    convertible, unsupported = split_convertible(model, selected)
    warn_or_raise_unsupported(unsupported, strict, "no quantizable counterpart", "quantize")

    if skip_first:
        convertible = convertible[1:]
    if skip_last:
        convertible = convertible[:-1]
    plan = {}
    for layer in convertible:
        takes_ids = isinstance(layer, keras.layers.Embedding)
        plan[id(layer)] = dict(
            kernel_quantizer=weight_quantizer,
            input_quantizer=None if takes_ids else input_quantizer,
        )
    if not plan:
        warnings.warn("ks.quantize found no layer to quantize.", stacklevel=2)
    return convert(model, plan, "configure_quantization")


def _calibration_batches(data, batches, batch_size):
    """The first ``batches`` input batches of ``data`` (an array, an
    ``(x, y)`` tuple of arrays, or an iterable of batches)."""
    check_int(batches, "batches", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    if data is None or isinstance(data, (str, bytes, dict)):
        raise type_error(
            "data", data, "an array, an (x, y) tuple of arrays or an iterable of batches"
        )
    if isinstance(data, (tuple, list)) and data and hasattr(data[0], "shape"):
        data = data[0]
    if hasattr(data, "shape") and hasattr(data, "__getitem__"):
        if len(data.shape) == 0 or data.shape[0] == 0:
            raise ValueError(
                f"`data` must hold at least one example. Received: data.shape={tuple(data.shape)}"
            )
        return [data[i:i + batch_size]
                for i in range(0, min(len(data), batches * batch_size), batch_size)]
    if not hasattr(data, "__iter__"):
        raise type_error(
            "data", data, "an array, an (x, y) tuple of arrays or an iterable of batches"
        )
    found = []
    for item in data:
        found.append(item[0] if isinstance(item, (tuple, list)) else item)
        if len(found) == batches:
            break
    if not found:
        raise ValueError(f"`data` yielded no batch. Received: data={data!r}")
    return found


def calibrate(model, data, batches=1, batch_size=256):
    """Set the data-dependent state of the input quantizers from real inputs.

    Runs the model eagerly (inference mode) on the first ``batches`` batches
    of ``data``, records what each sparse layer with an input quantizer
    receives, and lets the quantizer set its state from it, one layer after
    the other in model order (so a layer sees the inputs produced by the
    already-calibrated quantizers before it): LSQ's step
    becomes ``2 mean|x| / sqrt(Q_P)`` on the layer's actual inputs (the
    paper's rule; before calibration it is ``initial_step`` or 1.0).
    Quantizers without data-dependent state are left as they are. Call it
    after ``ks.quantize`` and before ``fit``.

    Args:
        model: a built model with sparse layers.
        data: an array of inputs, an ``(x, y)`` tuple, or an iterable of
            batches (``(x, y)`` or ``x``), e.g. a ``tf.data.Dataset``.
        batches: number of batches to use.
        batch_size: batch size when ``data`` is an array.

    Returns:
        The names of the layers whose quantizer state changed.

    Example:
    >>> model = ks.quantize(model, 4, activations=ks.quantizers.LSQ(4, signed=False))
    >>> ks.calibrate(model, x_train[:512])
    ['dense_1', 'dense_2']
    """
    from keras_sparse.utils import sparse_layers

    check_model(model)
    inputs = _calibration_batches(data, batches, batch_size)
    if not model.built:
        model(inputs[0], training=False)
    chosen = [layer for layer in sparse_layers(model)
              if layer.input_quantizer is not None and layer.quantizer_state("input")]
    if not chosen:
        return []
    changed = []
    # One layer at a time, in model order: a layer's inputs depend on the
    # quantizers before it, which are then already calibrated.
    for layer in chosen:
        object.__setattr__(layer, "_calibration_inputs", [])
        try:
            for batch in inputs:
                model(batch, training=False)
        finally:
            seen = layer.__dict__.pop("_calibration_inputs", [])
        if seen and layer.input_quantizer.calibrate(
                layer.quantizer_state("input"), np.concatenate([s.reshape(-1) for s in seen])):
            changed.append(layer.name)
    return changed
