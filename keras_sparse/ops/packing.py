"""Bit packing of integer codes (numpy): the storage format of
``ks.export`` for 1, 2, 4 and 8-bit weights and for bitmaps of kept
entries."""

import numpy as np

__all__ = ["pack_bits", "unpack_bits"]


def pack_bits(codes, width):
    """Pack non-negative integer ``codes`` (< ``2**width``) into bytes,
    ``8 // width`` codes per byte, first code in the lowest bits (numpy).

    Args:
        codes: integer array (flattened in row-major order).
        width: 1, 2, 4 or 8.

    Returns:
        A ``uint8`` array of ``ceil(codes.size * width / 8)`` bytes.

    Example:
    >>> pack_bits(np.array([1, 0, 1, 1]), 1)
    array([13], dtype=uint8)
    """
    if width not in (1, 2, 4, 8):
        raise ValueError(f"`width` must be 1, 2, 4 or 8. Received: width={width!r}")
    codes = np.asarray(codes).reshape(-1).astype(np.uint16)
    if codes.size and int(codes.max()) >= 2**width:
        raise ValueError(
            f"Codes must be below 2**width = {2**width}. Received: max code {int(codes.max())}"
        )
    per_byte = 8 // width
    padded = np.zeros(-(-codes.size // per_byte) * per_byte, np.uint16)
    padded[: codes.size] = codes
    shifts = (np.arange(per_byte, dtype=np.uint16) * width)[None, :]
    return (padded.reshape(-1, per_byte) << shifts).sum(axis=1).astype(np.uint8)


def unpack_bits(packed, width, count):
    """Inverse of :func:`pack_bits`: the first ``count`` codes as ``uint8``.

    Example:
    >>> unpack_bits(np.array([13], np.uint8), 1, 4)
    array([1, 0, 1, 1], dtype=uint8)
    """
    if width not in (1, 2, 4, 8):
        raise ValueError(f"`width` must be 1, 2, 4 or 8. Received: width={width!r}")
    per_byte = 8 // width
    packed = np.asarray(packed, np.uint8).reshape(-1, 1)
    shifts = (np.arange(per_byte, dtype=np.uint8) * width)[None, :]
    codes = (packed >> shifts) & np.uint8(2**width - 1)
    return codes.reshape(-1)[:count].astype(np.uint8)
