"""Column sampling: a ``Dense`` layer that reads only some input features.

A Keras kernel is ``(in, units)``, so an input feature is a *row* of the
kernel (a column of the PyTorch weight ``W^T``: the name "column sampling"
comes from that layout, and from CUR decompositions). ``ColumnSampledDense``
stores only the kept rows and an index of the features they read::

    outputs = activation(take(inputs, column_indices, axis=-1) @ kernel + bias)

so its parameters and FLOPs fall with ``keep / in``. Convert a trained model
with :func:`keras_sparse.sample_columns`, then :func:`keras_sparse.shrink`
removes whatever produced the features no layer reads any more.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sparse.checks import check_int
from keras_sparse.checks import type_error
from keras_sparse.config import PACKAGE
from keras_sparse.layers.quantization import DenseBody
from keras_sparse.ops.lowrank import COLUMN_METHODS
from keras_sparse.ops.lowrank import select_columns
from keras_sparse.layers.cost import stored_cost_row

__all__ = ["ColumnSampledDense", "resolve_keep"]


def resolve_keep(keep, in_features):
    """Number of features kept: ``keep`` itself (an int in ``[1, in]``) or
    ``round(keep * in)`` for a float fraction in ``(0, 1]`` (at least 1).

    ``in_features=None`` (not known yet, e.g. an unbuilt layer) checks
    ``keep`` on its own: an int must be at least 1 (the upper bound waits
    for the input size) and a fraction is returned as ``None``.

    Raises:
        ValueError: for ``keep <= 0``, ``keep > in`` or a non-number.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise type_error("keep", keep, "an int (features) or a float fraction in (0, 1]")
    if isinstance(keep, (float, np.floating)):
        if not 0.0 < keep <= 1.0:
            raise ValueError(
                f"A float `keep` is a fraction of the input features and must be in "
                f"(0, 1]. Received: keep={keep}"
            )
        if in_features is None:
            return None
        return min(in_features, max(1, int(math.floor(keep * in_features + 0.5))))
    if in_features is None:
        if keep < 1:
            raise ValueError(
                f"An int `keep` is a number of input features and must be at least 1. "
                f"Received: keep={keep}"
            )
        return int(keep)
    if keep < 1 or keep > in_features:
        raise ValueError(
            f"`keep` must be in [1, {in_features}] (the layer has {in_features} input "
            f"features). Received: keep={keep}"
        )
    return int(keep)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ColumnSampledDense(DenseBody, keras.layers.Layer):
    """A ``Dense`` layer that stores and reads only ``keep`` input features.

    Args:
        units: output dimension.
        keep: number of input features kept (int) or a fraction of them
            (float in ``(0, 1]``).
        method: how the features are chosen when the layer is built:
            ``"leverage"`` (largest leverage scores of the kernel's truncated
            SVD, CUR-style), ``"norm"`` (largest row L2 norm) or ``"random"``.
            Built from scratch, the method sees the initial kernel drawn from
            ``kernel_initializer``; with an i.i.d. initializer every method
            then picks an effectively random subset. On a *trained* layer use
            :func:`keras_sparse.sample_columns`, which also refits the kept
            weights by least squares.
        seed: seed of the ``"random"`` method (and of nothing else).
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as ``keras.layers.Dense``.
        kernel_quantizer: a :mod:`keras_sparse.quantizers` quantizer applied
            to the stored kernel.

    Weights: ``kernel`` ``(keep, units)``, ``bias`` ``(units,)`` and the
    non-trainable ``column_indices`` ``(keep,)`` int32 (sorted).

    Example:
    >>> layer = ks.layers.ColumnSampledDense(10, keep=32, method="norm")
    >>> layer(np.zeros((2, 64))).shape
    (2, 10)
    >>> layer.column_indices.shape
    (32,)
    """

    def __init__(
        self,
        units,
        keep,
        method="leverage",
        seed=None,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        kernel_quantizer=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"`units` must be a positive integer. Received: units={units!r}")
        if method not in COLUMN_METHODS:
            raise ValueError(
                f"`method` must be one of {COLUMN_METHODS}. Received: method={method!r}"
            )
        # The upper bound (the input size) is checked when the layer is built.
        resolve_keep(keep, None)
        self.units = int(units)
        self.keep = keep
        self.method = method
        self.seed = check_int(seed, "seed", allow_none=True)
        self._init_dense_body(
            activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
            bias_regularizer, kernel_constraint, bias_constraint, kernel_quantizer,
        )

    def build(self, input_shape):
        in_features = input_shape[-1]
        if in_features is None:
            raise ValueError(
                f"Layer {self.name!r} needs a known last input dimension. "
                f"Received: input_shape={input_shape}"
            )
        count = resolve_keep(self.keep, in_features)
        initial = ops.convert_to_numpy(
            self.kernel_initializer(shape=(in_features, self.units), dtype="float32")
        )
        indices = select_columns(initial, count, self.method, seed=self.seed)
        self.in_features = int(in_features)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(count, self.units),
            initializer=keras.initializers.Constant(initial[indices]),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = self._add_bias(self.units)
        self.column_indices = self.add_weight(
            name="column_indices",
            shape=(count,),
            initializer=keras.initializers.Constant(indices),
            dtype="int32",
            trainable=False,
        )
        self._build_kernel_quantizer("kernel", self.kernel, "kernel_quantizer")
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: in_features})

    @property
    def kept_features(self):
        """The kept input features, as a sorted numpy int array."""
        return np.asarray(ops.convert_to_numpy(self.column_indices), dtype="int64")

    def set_columns(self, indices, kernel, bias=None):
        """Set the kept features and their weights (``kernel`` ``(keep,
        units)``). ``indices`` must be distinct, in range and of the built
        size; they are stored sorted (the kernel rows follow)."""
        indices = np.asarray(indices, dtype="int64").reshape(-1)
        kernel = np.asarray(kernel, dtype="float32")
        count = int(self.column_indices.shape[0])
        if indices.shape != (count,) or len(set(indices.tolist())) != count or (
            indices.min() < 0 or indices.max() >= self.in_features
        ):
            raise ValueError(
                f"`indices` must be {count} distinct features in [0, {self.in_features}). "
                f"Received: indices={indices.tolist()}"
            )
        if kernel.shape != (count, self.units):
            raise ValueError(
                f"`kernel` must have shape {(count, self.units)}. Received: shape={kernel.shape}"
            )
        order = np.argsort(indices, kind="stable")
        self.column_indices.assign(indices[order].astype("int32"))
        self.kernel.assign(kernel[order])
        if bias is not None:
            if self.bias is None:
                raise ValueError(f"Layer {self.name!r} has no bias (use_bias=False).")
            self.bias.assign(np.asarray(bias, dtype="float32"))
        self._initialize_kernel_quantizer("kernel", self.kernel)

    def effective_kernel(self, training=None):
        """The stored kernel as used in the forward pass (quantized if the
        layer has a ``kernel_quantizer``)."""
        return self._quantized("kernel", self.kernel, training)

    def full_kernel(self):
        """The equivalent ``Dense`` kernel ``(in, units)`` (zero rows for the
        features not read), as numpy."""
        full = np.zeros((self.in_features, self.units), dtype="float32")
        full[self.kept_features] = ops.convert_to_numpy(self.effective_kernel())
        return full

    def call(self, inputs, training=None):
        selected = ops.take(inputs, self.column_indices, axis=-1)
        return self._finish(ops.matmul(selected, self.effective_kernel(training)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def report_row(self):
        """This layer's row in :func:`keras_sparse.report`: its stored
        parameters and bytes and the FLOPs it computes."""
        return _column_sampled_cost(self)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "keep": self.keep,
                "method": self.method,
                "seed": self.seed,
            }
        )
        config.update(self._dense_body_config())
        return config


def _column_sampled_cost(layer):
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values())) if len(shapes) == 1 else None
    positions = None
    if isinstance(shape, (tuple, list)) and all(d is not None for d in shape[1:-1]):
        positions = int(math.prod(shape[1:-1])) if len(shape) > 2 else 1
    return stored_cost_row(
        layer, [layer.kernel], math.prod(layer.kernel.shape), positions,
        pattern=f"{int(layer.kernel.shape[0])}/{layer.in_features} cols",
    )
