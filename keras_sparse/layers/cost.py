"""Report rows of layers whose weights are all stored and used as they are
(low-rank factors, sampled columns): the layers answer their own cost to
:func:`keras_sparse.report` through ``report_row()``."""

import math

import numpy as np
from keras import ops

__all__ = ["stored_cost_row"]


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
