"""Report rows: layers answer their own cost to :func:`keras_sparse.report`
through ``report_row()``, built from the functions here (weights applied at
every input position, or weights all stored and used as they are: low-rank
factors, sampled columns)."""

import math

import keras
import numpy as np
from keras import ops

__all__ = ["stored_cost_row", "weights_cost_row", "layer_macs", "packed_width", "weight_bits"]


def stored_cost_row(layer, quantized, macs, positions, pattern):
    """Report row of a layer whose weights are all stored and used as they
    are (low-rank factors, sampled columns): real parameters, bytes, packed
    bytes (``quantized`` variables at the kernel quantizer's precision) and
    ``2 * macs * positions`` FLOPs per example (``None`` when ``positions``
    is unknown)."""
    quantizer = getattr(layer, "kernel_quantizer", None)
    bits = quantizer.precision if quantizer is not None else 32
    quantized = {id(v) for v in quantized}
    params = nbytes = packed = nonzeros = 0
    for variable in layer.weights:
        size = int(math.prod(variable.shape))
        value_bytes = 2 if variable.dtype == "bfloat16" else np.dtype(variable.dtype).itemsize
        params += size
        nbytes += size * value_bytes
        nonzeros += int(np.count_nonzero(ops.convert_to_numpy(variable)))
        if id(variable) in quantized and quantizer is not None:
            packed += math.ceil(size * bits / 8)
        else:
            packed += size * value_bytes
    flops = None if positions is None else 2 * int(macs) * positions
    return dict(
        params=params,
        nonzeros=nonzeros,
        masked_params=0,
        masked_nonzeros=0,
        pattern=pattern,
        bits=bits,
        dense_bytes=nbytes,
        compressed_bytes=nbytes,
        packed_bytes=packed,
        dense_flops=flops,
        effective_flops=flops,
        binary_flops=flops if bits == 1 and flops is not None else 0,
        sparsity=1.0 - nonzeros / params if params else 0.0,
    )


def _input_shape(layer):
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if isinstance(shape, (tuple, list)) and all(
            d is None or isinstance(d, int) for d in shape
        ):
            return tuple(shape)
    return None


def _positions(shape):
    """Product of the non-batch, non-channel dims of a channels-last shape."""
    if shape is None:
        return None
    dims = [d for d in shape[1:-1]]
    if any(d is None for d in dims):
        return None
    return int(math.prod(dims)) if dims else 1


def layer_macs(layer, weight_name, weight_size, output_axes=()):
    """Multiply-accumulates per example that weight ``weight_name`` (with
    ``weight_size`` entries taking part) costs in ``layer``, or ``None``
    when the layer's input shape is unknown. ``output_axes`` are the axes of
    the weight that index output units, where the layer knows them (an
    ``EinsumDense`` kernel; by default its last output dimension)."""
    in_shape = _input_shape(layer)
    if in_shape is None or isinstance(layer, keras.layers.Embedding):
        return 0 if isinstance(layer, keras.layers.Embedding) else None
    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    if channels_first:
        in_shape = (in_shape[0],) + tuple(in_shape[2:]) + (in_shape[1],)
    if isinstance(layer, keras.layers.EinsumDense):
        out = layer.compute_output_shape(_input_shape(layer))
        out_units = math.prod(d for d in out[1:] if d is not None)
        kernel_out = math.prod(layer.kernel.shape[i] for i in output_axes) or out[-1]
        return weight_size * max(1, out_units // max(1, kernel_out))
    transpose_types = tuple(
        getattr(keras.layers, n) for n in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
    )
    if isinstance(layer, transpose_types):
        return weight_size * (_positions(in_shape) or 0)
    if len(in_shape) <= 2 or isinstance(layer, keras.layers.Dense):
        return weight_size * (_positions(in_shape) or 1)
    out_shape = tuple(layer.compute_output_shape(_input_shape(layer)))
    if channels_first:
        out_shape = (out_shape[0],) + tuple(out_shape[2:]) + (out_shape[1],)
    return weight_size * (_positions(out_shape) or 0)


def _compressed_bytes(size, kept, value_bytes, index_bytes):
    if kept == size:
        return size * value_bytes
    return kept * value_bytes + index_bytes


def packed_width(precision):
    """Bits one value occupies once packed: 1, 2, 4 or 8 (16 or 32 above)."""
    for width in (1, 2, 4, 8, 16):
        if precision <= width:
            return width
    return 32


def _packed_bytes(size, kept, bits, index_bytes, side_values):
    """Values packed at ``bits`` each: densely, or only the ``kept`` ones
    plus the sparse index, whichever is smaller; plus float32 side values."""
    dense = math.ceil(size * bits / 8)
    if kept < size:
        dense = min(dense, math.ceil(kept * bits / 8) + index_bytes)
    return dense + 4 * side_values


def weight_bits(layer):
    """Bits per value of the layer's main weights: the kernel quantizer's
    precision, else the width of the first weight's dtype."""
    quantizer = getattr(layer, "kernel_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "precision"):
        return int(quantizer.precision)
    for variable in layer.weights:
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if dtype != "bool":
            return 16 if dtype == "bfloat16" else 8 * np.dtype(dtype).itemsize
    return None


def _kernel_names(layer):
    """Variables of a plain Keras layer that take part in its MACs."""
    names = {}
    for name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
        value = layer.__dict__.get(name, None) or layer.__dict__.get("_" + name, None)
        if value is not None and hasattr(value, "shape"):
            names[id(value)] = name
    return names


def weights_cost_row(layer, masked=False):
    """Report row of a layer whose cost is its weights applied at every
    position of its input (Dense, convolutions, embeddings, ...), as
    :func:`keras_sparse.report` shows it: parameters, non-zeros, dense,
    compressed and packed bytes, dense and effective FLOPs per example.

    Args:
        layer: a built layer.
        masked: the layer carries masks and a quantizer
            (:class:`~keras_sparse.layers.SparseMixin`, whose
            ``report_row`` passes ``True``): its masked weights count at
            their effective value, their index costs what the layer's
            pattern answers (``Pattern.index_bytes``) and their packed size
            is at the kernel quantizer's precision.

    Returns:
        The row dict (see :func:`keras_sparse.report.register_cost`).

    Example:
    >>> dense = keras.layers.Dense(4)
    >>> dense.build((None, 8))
    >>> weights_cost_row(dense)["params"]
    36
    """
    masks = {id(v) for v in layer.auxiliary_variables()} if masked else set()
    latents = {id(layer.latent_weight(n)): n for n in layer.sparse_weight_names} if masked else {}
    row = dict(layer=layer.name, type=type(layer).__name__, params=0, nonzeros=0,
               masked_params=0, masked_nonzeros=0,
               pattern=type(layer.pattern).__name__ if masked else "-",
               dense_bytes=0, compressed_bytes=0, dense_flops=0, effective_flops=0,
               bits=weight_bits(layer), packed_bytes=0, binary_flops=0)
    flops_known = True
    kernel_names = _kernel_names(layer)
    quantizer = layer.kernel_quantizer if masked else None
    binary = bool(
        quantizer is not None and quantizer.precision == 1
        and layer.input_quantizer is not None and layer.input_quantizer.precision == 1
    )
    for variable in layer.weights:
        if id(variable) in masks:
            continue
        size = int(math.prod(variable.shape))
        value_bytes = np.dtype(variable.dtype).itemsize if variable.dtype != "bfloat16" else 2
        row["params"] += size
        row["dense_bytes"] += size * value_bytes
        name = latents.get(id(variable))
        if name is not None:
            value = ops.convert_to_numpy(layer.effective_weight(name))
            kept = int(np.count_nonzero(value))
            # The pattern answers what locating the kept entries costs.
            index = layer.pattern.index_bytes(
                tuple(variable.shape), kept, layer.weight_layout(name))
            row["compressed_bytes"] += _compressed_bytes(size, kept, value_bytes, index)
            if quantizer is None:
                bits, side = 8 * value_bytes, 0
            else:
                bits = packed_width(quantizer.precision)
                side = quantizer.side_values(
                    tuple(variable.shape), tuple(layer.weight_layout(name).output_axes))
            row["packed_bytes"] += _packed_bytes(size, kept, bits, index, side)
            row["masked_params"] += size
            row["masked_nonzeros"] += kept
        else:
            kept = int(np.count_nonzero(ops.convert_to_numpy(variable)))
            row["compressed_bytes"] += size * value_bytes
            row["packed_bytes"] += size * value_bytes
            name = kernel_names.get(id(variable))
        row["nonzeros"] += kept
        if name is not None:
            axes = tuple(layer.weight_layout(name).output_axes) if name in latents.values() else ()
            dense = layer_macs(layer, name, size, axes)
            eff = layer_macs(layer, name, kept, axes)
            if dense is None:
                flops_known = False
            else:
                row["dense_flops"] += 2 * dense
                row["effective_flops"] += 2 * eff
                if binary:
                    row["binary_flops"] += 2 * eff
    if not flops_known:
        row["dense_flops"] = row["effective_flops"] = row["binary_flops"] = None
    if masked:
        row["sparsity"] = layer.sparsity
        # Masks are not parameters; they take one byte per masked entry
        # while training (a layer that is only quantized has none).
        masks = [layer.get_mask(n) for n in layer.sparse_weight_names]
        row["mask_bytes"] = sum(
            int(math.prod(m.shape)) * np.dtype(m.dtype).itemsize for m in masks if m is not None
        )
    else:
        row["sparsity"] = 1.0 - row["nonzeros"] / row["params"] if row["params"] else 0.0
    return row
