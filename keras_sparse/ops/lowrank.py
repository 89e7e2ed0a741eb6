"""Floor 1: low-rank math on weight matrices (truncated SVD, energy rank,
leverage scores, column selection).

Everything works on a 2-D matrix in the *Keras* layout ``(in, out)``: an
input feature is a **row** (a column in the PyTorch layout, ``A = W^T``).
A convolution kernel ``(*spatial, in, out)`` is first viewed as
``(prod(spatial) * in, out)`` with :func:`as_matrix`.

All functions use ``keras.ops`` and return backend tensors, except the ones
that return a count or indices (Python ``int`` / numpy ``int`` arrays),
which the model tools use to size new layers.
"""

import math

import numpy as np
from keras import ops

from keras_sparse.checks import check_int
from keras_sparse.checks import type_error

__all__ = [
    "as_matrix",
    "check_rank",
    "factor_params",
    "leverage_scores",
    "lowrank_factors",
    "rank_for_energy",
    "select_columns",
    "singular_values",
    "truncated_svd",
    "COLUMN_METHODS",
]

#: Methods accepted by :func:`select_columns`.
COLUMN_METHODS = ("leverage", "norm", "random")


def as_matrix(kernel):
    """View a kernel ``(*spatial, in, out)`` as a matrix ``(prod(spatial)*in, out)``."""
    kernel = ops.convert_to_tensor(kernel)
    shape = tuple(kernel.shape)
    if len(shape) < 2:
        raise ValueError(
            f"A kernel needs at least 2 dimensions. Received: shape={shape}"
        )
    return ops.reshape(kernel, (math.prod(shape[:-1]), shape[-1]))


def _matrix(matrix):
    matrix = ops.convert_to_tensor(matrix)
    if len(matrix.shape) != 2:
        raise ValueError(
            f"Expected a 2-D matrix (in, out). Received: shape={tuple(matrix.shape)}"
        )
    if matrix.dtype not in ("float32", "float64"):
        matrix = ops.cast(matrix, "float32")
    return matrix


def truncated_svd(matrix, rank=None):
    """Thin SVD ``M = U diag(s) V^T``, truncated to ``rank`` terms.

    Args:
        matrix: ``(m, n)`` tensor.
        rank: number of singular triplets kept (``None``: all
            ``min(m, n)``).

    Returns:
        ``(u, s, vt)`` with shapes ``(m, r)``, ``(r,)``, ``(r, n)`` and ``s``
        in non-increasing order.
    """
    matrix = _matrix(matrix)
    u, s, vt = ops.svd(matrix, full_matrices=False, compute_uv=True)
    if rank is not None:
        check_rank(rank, tuple(matrix.shape), allow_full=True)
        u, s, vt = u[:, :rank], s[:rank], vt[:rank, :]
    return u, s, vt


def singular_values(matrix):
    """The singular values of ``matrix`` in non-increasing order."""
    return ops.svd(_matrix(matrix), full_matrices=False, compute_uv=False)


def check_rank(rank, shape, allow_full=False):
    """Validate a rank for a matrix of ``shape`` ``(m, n)``.

    A factorization only saves something when ``rank < min(m, n)``;
    ``allow_full`` also accepts ``min(m, n)`` (a plain SVD).

    Raises:
        ValueError: naming the rank and the matrix shape.
    """
    limit = min(shape)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise type_error("rank", rank, "a positive integer")
    if rank < 1 or rank > limit or (rank == limit and not allow_full):
        bound = f"<= {limit}" if allow_full else f"< min(in, out) = {limit}"
        raise ValueError(
            f"`rank` must be >= 1 and {bound} for a weight of shape {tuple(shape)}. "
            f"Received: rank={rank}"
        )
    return int(rank)


def rank_for_energy(singular_values, energy):
    r"""Smallest rank keeping a fraction ``energy`` of the spectral energy.

    .. math:: r = \min\{k : \sum_{i \le k} s_i^2 \ge \text{energy} \cdot \sum_i s_i^2\}

    Args:
        singular_values: 1-D, non-increasing.
        energy: fraction in ``(0, 1]``.

    Returns:
        A Python ``int`` in ``[1, len(singular_values)]``.
    """
    if isinstance(energy, bool) or not isinstance(energy, (int, float, np.floating)) or not (
        0.0 < float(energy) <= 1.0
    ):
        raise ValueError(f"`energy` must be in (0, 1]. Received: energy={energy!r}")
    s = np.asarray(ops.convert_to_numpy(singular_values), dtype="float64")
    power = s**2
    total = power.sum()
    if total == 0.0:
        return 1
    cumulative = np.cumsum(power) / total
    # A tiny tolerance so energy=1.0 is met despite rounding of the cumsum.
    rank = int(np.searchsorted(cumulative, float(energy) - 1e-12) + 1)
    return min(max(rank, 1), len(s))


def lowrank_factors(matrix, rank):
    r"""Best rank-``rank`` factors of ``matrix`` (Eckart--Young).

    With :math:`M = U S V^T`, returns :math:`A = U_r S_r^{1/2}` and
    :math:`B = S_r^{1/2} V_r^T` so that :math:`AB` is the best rank-``r``
    approximation in Frobenius and spectral norm, with
    :math:`\|M - AB\|_F^2 = \sum_{i>r} s_i^2`. The square root split keeps
    both factors on the same scale (better for fine-tuning).

    Returns:
        ``(a, b)`` with shapes ``(m, rank)`` and ``(rank, n)``.
    """
    u, s, vt = truncated_svd(matrix, rank)
    root = ops.sqrt(s)
    return u * root[None, :], root[:, None] * vt


def leverage_scores(matrix, rank=None):
    r"""Leverage scores of the input features (rows) of a Keras kernel.

    For the kernel :math:`W \in \mathbb{R}^{in \times out}` with thin SVD
    :math:`W = U S V^T`, the rank-``k`` leverage score of input feature
    :math:`i` is :math:`\ell_i = \|U_{i,:k}\|_2^2` (the column leverage of
    :math:`W^T` in the CUR literature, Mahoney & Drineas 2009). They lie in
    ``[0, 1]`` and sum to ``k``.

    Args:
        matrix: ``(in, out)`` kernel.
        rank: ``k``; ``None`` uses every singular vector with a non-zero
            singular value.

    Returns:
        A ``(in,)`` tensor.
    """
    matrix = _matrix(matrix)
    u, s, _ = truncated_svd(matrix)
    if rank is None:
        s_np = ops.convert_to_numpy(s)
        tol = (s_np[0] if len(s_np) else 0.0) * max(matrix.shape) * np.finfo("float32").eps
        rank = max(1, int(np.sum(s_np > tol)))
    else:
        rank = check_rank(rank, tuple(matrix.shape), allow_full=True)
    return ops.sum(ops.square(u[:, :rank]), axis=1)


def _check_keep(keep, in_features):
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)):
        raise type_error("keep", keep, "an integer number of input features")
    if keep < 1 or keep > in_features:
        raise ValueError(
            f"`keep` must be in [1, {in_features}] (the number of input features). "
            f"Received: keep={keep}"
        )
    return int(keep)


def select_columns(matrix, keep, method="leverage", rank=None, seed=None):
    """Indices of the ``keep`` input features (rows of a Keras kernel) to keep.

    Methods:

    * ``"leverage"``: the ``keep`` largest rank-``k`` leverage scores
      (deterministic CUR column-subset selection, Papailiopoulos et al.
      2014), ``k = rank`` or ``min(keep, out)``;
    * ``"norm"``: the ``keep`` rows with the largest L2 norm;
    * ``"random"``: a uniform random subset (numpy generator seeded by
      ``seed``).

    Ties are broken by the lower index. Returns a sorted numpy ``int32``
    array.
    """
    matrix = _matrix(matrix)
    in_features, out_features = tuple(matrix.shape)
    keep = _check_keep(keep, in_features)
    if method not in COLUMN_METHODS:
        raise ValueError(
            f"`method` must be one of {COLUMN_METHODS}. Received: method={method!r}"
        )
    check_int(seed, "seed", allow_none=True)
    check_int(rank, "rank", minimum=1, allow_none=True)
    if method == "random":
        rng = np.random.default_rng(seed)
        chosen = rng.choice(in_features, size=keep, replace=False)
        return np.sort(chosen).astype("int32")
    if method == "leverage":
        k = rank if rank is not None else min(keep, out_features, in_features)
        scores = leverage_scores(matrix, k)
    else:
        scores = ops.sqrt(ops.sum(ops.square(matrix), axis=1))
    scores = np.asarray(ops.convert_to_numpy(scores), dtype="float64")
    order = np.lexsort((np.arange(in_features), -scores))  # score desc, index asc
    return np.sort(order[:keep]).astype("int32")


def factor_params(in_features, out_features, rank):
    """Weights of a rank-``rank`` factorization of an ``(in, out)`` matrix."""
    return int(rank) * (int(in_features) + int(out_features))
