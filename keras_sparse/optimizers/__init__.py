"""Optimizers for binary networks (Bop, and a case optimizer that routes each
variable to the optimizer meant for it) and for exact zeros from penalties
(:class:`Proximal`: any optimizer followed by the penalty's proximal step).

A binary network has two kinds of trainable variables: the latent kernels of
binary layers (only their sign is used) and everything else (biases,
BatchNorm, float first/last layers). :class:`Bop` trains the first kind by
flipping signs; a normal optimizer trains the rest. :class:`CaseOptimizer`
puts the two together as one Keras optimizer, so ``model.compile`` and
``model.fit`` work as usual on every backend::

    optimizer = ks.optimizers.CaseOptimizer(
        (ks.optimizers.binary_kernels(model), ks.optimizers.Bop()),
        default=keras.optimizers.Adam(1e-3),
    )

A case's predicate looks at a variable only (the optimizer never sees the
layers): :func:`binary_kernels` builds one from a model, :class:`PathMatches`
selects by variable path, and ``"binary"`` (:class:`IsBinary`) accepts
variables that carry ``precision == 1`` as an attribute (Larq's convention
for the latent weights of binary layers).
"""

from keras_sparse.optimizers.bop import Bop
from keras_sparse.optimizers.case_optimizer import CaseOptimizer
from keras_sparse.optimizers.predicates import IsBinary
from keras_sparse.optimizers.predicates import IsKernel
from keras_sparse.optimizers.predicates import kernels
from keras_sparse.optimizers.proximal import Proximal
from keras_sparse.optimizers.predicates import PathMatches
from keras_sparse.optimizers.predicates import binary_kernels
from keras_sparse.optimizers.predicates import get_predicate
from keras_sparse.optimizers.predicates import is_binary_variable
from keras_sparse.optimizers.predicates import quantized_weights
from keras_sparse.optimizers.predicates import variable_precision

__all__ = [
    "Bop",
    "CaseOptimizer",
    "IsBinary",
    "IsKernel",
    "Proximal",
    "kernels",
    "PathMatches",
    "binary_kernels",
    "quantized_weights",
    "get_predicate",
    "is_binary_variable",
    "variable_precision",
]
