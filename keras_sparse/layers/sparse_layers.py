"""The sparse layer family: each class is :class:`SparseMixin` plus its Keras
parent, with the parent's full signature plus ``schedule``, ``pattern``,
``scorer`` and ``global_pruning``.

Layouts name the input axes (contracted with the layer input, used by N:M)
and the output axes (one index per output unit, used by channel pruning).
"""

import keras

from keras_sparse.config import PACKAGE
from keras_sparse.layers.base import Layout
from keras_sparse.layers.base import SparseMixin

_register = keras.saving.register_keras_serializable(package=PACKAGE)

_IN_OUT = Layout((-2,), (-1,))  # Dense (in, out), Conv (..., in, out)
_OUT_IN = Layout((-1,), (-2,))  # ConvTranspose (..., out, in)
_DEPTHWISE = Layout((), (-2, -1))  # (..., in_channels, depth_multiplier)

#: Keras class -> sparse class, for conversion. Filled below.
SPARSE_CLASS_FOR = {}


def _family(keras_cls):
    def decorator(cls):
        cls = _register(cls)
        SPARSE_CLASS_FOR[keras_cls] = cls
        return cls

    return decorator


@_family(keras.layers.Dense)
class SparseDense(SparseMixin, keras.layers.Dense):
    """``keras.layers.Dense`` with a masked kernel.

    Example:
    >>> layer = ks.layers.SparseDense(64, schedule=ks.schedules.ConstantSparsity(0.9))
    """

    sparse_weight_layouts = {"kernel": _IN_OUT}


@_family(keras.layers.Conv1D)
class SparseConv1D(SparseMixin, keras.layers.Conv1D):
    """``keras.layers.Conv1D`` with a masked kernel.

    Example:
    >>> ks.layers.SparseConv1D(16, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _IN_OUT}


@_family(keras.layers.Conv2D)
class SparseConv2D(SparseMixin, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with a masked kernel.

    Example:
    >>> ks.layers.SparseConv2D(32, 3, schedule=0.5, pattern="channel")
    """

    sparse_weight_layouts = {"kernel": _IN_OUT}


@_family(keras.layers.Conv3D)
class SparseConv3D(SparseMixin, keras.layers.Conv3D):
    """``keras.layers.Conv3D`` with a masked kernel.

    Example:
    >>> ks.layers.SparseConv3D(8, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _IN_OUT}


@_family(keras.layers.Conv1DTranspose)
class SparseConv1DTranspose(SparseMixin, keras.layers.Conv1DTranspose):
    """``keras.layers.Conv1DTranspose`` with a masked kernel.

    Its kernel is ``(k, filters, in_channels)``: the input axis is last.

    Example:
    >>> ks.layers.SparseConv1DTranspose(8, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _OUT_IN}


@_family(keras.layers.Conv2DTranspose)
class SparseConv2DTranspose(SparseMixin, keras.layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose`` with a masked kernel.

    Its kernel is ``(kh, kw, filters, in_channels)``: the input axis is last.

    Example:
    >>> ks.layers.SparseConv2DTranspose(8, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _OUT_IN}


@_family(keras.layers.Conv3DTranspose)
class SparseConv3DTranspose(SparseMixin, keras.layers.Conv3DTranspose):
    """``keras.layers.Conv3DTranspose`` with a masked kernel.

    Example:
    >>> ks.layers.SparseConv3DTranspose(4, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _OUT_IN}


@_family(keras.layers.DepthwiseConv1D)
class SparseDepthwiseConv1D(SparseMixin, keras.layers.DepthwiseConv1D):
    """``keras.layers.DepthwiseConv1D`` with a masked depthwise kernel.

    Example:
    >>> ks.layers.SparseDepthwiseConv1D(3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _DEPTHWISE}


@_family(keras.layers.DepthwiseConv2D)
class SparseDepthwiseConv2D(SparseMixin, keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` with a masked depthwise kernel.

    Its kernel is ``(kh, kw, channels, depth_multiplier)``; output units for
    channel pruning are the ``(channel, multiplier)`` pairs. N:M is not
    defined for it (there is no input-channel reduction).

    Example:
    >>> ks.layers.SparseDepthwiseConv2D(3, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _DEPTHWISE}


@_family(keras.layers.SeparableConv1D)
class SparseSeparableConv1D(SparseMixin, keras.layers.SeparableConv1D):
    """``keras.layers.SeparableConv1D`` with both kernels masked.

    Example:
    >>> ks.layers.SparseSeparableConv1D(16, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"depthwise_kernel": _DEPTHWISE, "pointwise_kernel": _IN_OUT}


@_family(keras.layers.SeparableConv2D)
class SparseSeparableConv2D(SparseMixin, keras.layers.SeparableConv2D):
    """``keras.layers.SeparableConv2D`` with both kernels masked.

    Example:
    >>> ks.layers.SparseSeparableConv2D(16, 3, schedule=0.5)
    """

    sparse_weight_layouts = {"depthwise_kernel": _DEPTHWISE, "pointwise_kernel": _IN_OUT}


def _einsum_layout(equation):
    left, _, out = equation.replace("...", "").partition("->")
    inp, _, kernel = left.partition(",")
    inputs = tuple(i for i, c in enumerate(kernel) if c in inp and c not in out)
    outputs = tuple(i for i, c in enumerate(kernel) if c in out)
    return Layout(inputs, outputs)


@_family(keras.layers.EinsumDense)
class SparseEinsumDense(SparseMixin, keras.layers.EinsumDense):
    """``keras.layers.EinsumDense`` with a masked kernel.

    The layout is read from the equation: kernel axes shared with the input
    (and not the output) are input axes; kernel axes in the output are
    output units.

    Example:
    >>> ks.layers.SparseEinsumDense("ab,bc->ac", output_shape=64, schedule=0.5)
    """

    sparse_weight_layouts = {"kernel": _IN_OUT}

    def weight_layout(self, name):
        return _einsum_layout(self.equation)


@_family(keras.layers.Embedding)
class SparseEmbedding(SparseMixin, keras.layers.Embedding):
    """``keras.layers.Embedding`` with a masked embedding table.

    The table is ``(input_dim, output_dim)``; channel pruning removes
    embedding dimensions.

    Example:
    >>> ks.layers.SparseEmbedding(1000, 64, schedule=0.8)
    """

    sparse_weight_layouts = {"embeddings": Layout((0,), (-1,))}


# ------------------------------------------------- subclasses of Keras layers
#: The registered name every sparse class made for a user's subclass is saved
#: under; :class:`_SubclassLoader` answers to it at load.
_SUBCLASS_NAME = "SparseSubclass"
_SUBCLASS_KEY = f"{PACKAGE}>{_SUBCLASS_NAME}"
#: The config key holding the registered name of the user's class.
_PARENT_KEY = "keras_parent"
_SUBCLASSES = {}


def _code_names(code):
    """Every global and attribute name ``code`` (and the functions it
    defines) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _code_names(const)
    return names


def _call_is_served(cls, family, weight_names):
    """Whether every ``call`` a class of ``cls``'s MRO defines before
    ``family`` reads the weights the way the weight property serves: through
    ``self.<name>`` or by delegating to ``super().call``, never through the
    latent ``self._<name>`` (which would skip the mask and the quantizer)."""
    for klass in cls.__mro__:
        if klass is family:
            return True
        call = vars(klass).get("call")
        code = getattr(call, "__code__", None)
        if call is None:
            continue
        if code is None:
            return False
        names = _code_names(code)
        if any("_" + name in names for name in weight_names):
            return False
        if "super" not in names and not any(name in names for name in weight_names):
            return False
    return True


class _SubclassSerialization:
    """Config of a sparse class made for a user's subclass: the registered
    name of the user's class rides along, so loading can make the class
    again (:class:`_SubclassLoader`)."""

    def get_config(self):
        config = super().get_config()
        config[_PARENT_KEY] = keras.saving.get_registered_name(self._keras_parent)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop(_PARENT_KEY, None)
        return super().from_config(config)

    def plain_config(self):
        config = super().plain_config()
        config.pop(_PARENT_KEY, None)
        return config


class _SubclassLoader:
    """What Keras finds under the registered name of every sparse class made
    by :func:`sparse_class_for`: it makes the class again from the user's
    class named in the config, then the layer."""

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        name = config.get(_PARENT_KEY)
        parent = keras.saving.get_registered_object(name) if isinstance(name, str) else None
        if parent is None:
            raise TypeError(
                f"The sparse layer {config.get('name')!r} was made from the Keras layer class "
                f"{name!r}, which is not known in this process. Import the module that "
                "defines it, decorated with @keras.saving.register_keras_serializable(), "
                f"or pass custom_objects={{{name!r}: YourClass}} to keras.saving.load_model. "
                f"Received: {_PARENT_KEY}={name!r}"
            )
        sparse_cls = sparse_class_for(parent)
        if sparse_cls is None:
            raise TypeError(
                f"The Keras layer class {name!r} has no sparse counterpart in this process "
                f"(its `call` changed?). Received: {_PARENT_KEY}={name!r}"
            )
        return sparse_cls.from_config(config)


keras.saving.get_custom_objects()[_SUBCLASS_KEY] = _SubclassLoader


def sparse_class_for(cls):
    """The sparse class of a Keras layer class, its subclasses included.

    For a class of the family (``keras.layers.Dense`` ...) it is the
    family's class (``SparseDense``). For a user's subclass (``class
    MyDense(keras.layers.Dense)``) it is a class made once per subclass:
    ``SparseMyDense(SparseDense, MyDense)``, so the user's own methods still
    run and the mask and quantizer reach the kernel through the same
    property. Such a class is saved under one registered name; loading a
    ``.keras`` file makes it again from the user's class, which must be
    known to Keras at load (registered with
    ``keras.saving.register_keras_serializable()`` and imported, or passed
    in ``custom_objects``), as for any model holding that class.

    A subclass whose own ``call`` reads a weight's latent variable
    (``self._kernel``), or neither the weight nor ``super().call``, cannot
    be served by the weight property: it has no sparse class.

    Args:
        cls: a ``keras.layers.Layer`` subclass.

    Returns:
        The sparse class, ``cls`` itself for a sparse class, or ``None`` when
        ``cls`` has no sparse counterpart.

    Raises:
        TypeError: for something other than a Keras layer class.

    Example:
    >>> class MyDense(keras.layers.Dense):
    ...     pass
    >>> ks.layers.sparse_class_for(MyDense).__name__
    'SparseMyDense'
    """
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise TypeError(f"`cls` must be a keras.layers.Layer subclass. Received: cls={cls!r}")
    if issubclass(cls, SparseMixin):
        return cls
    if cls in SPARSE_CLASS_FOR:
        return SPARSE_CLASS_FOR[cls]
    if cls in _SUBCLASSES:
        return _SUBCLASSES[cls]
    family = next((klass for klass in cls.__mro__ if klass in SPARSE_CLASS_FOR), None)
    if family is None:
        return None
    base = SPARSE_CLASS_FOR[family]
    if not _call_is_served(cls, family, base.sparse_weight_layouts):
        return None
    sparse_cls = type(
        "Sparse" + cls.__name__,
        (_SubclassSerialization, base, cls),
        {
            "__module__": __name__,
            "__doc__": f"``{cls.__module__}.{cls.__qualname__}`` as a {base.__name__}.",
        },
    )
    keras.saving.register_keras_serializable(package=PACKAGE, name=_SUBCLASS_NAME)(sparse_cls)
    # Every such class shares the registered name; the loader answers to it.
    keras.saving.get_custom_objects()[_SUBCLASS_KEY] = _SubclassLoader
    _SUBCLASSES[cls] = sparse_cls
    return sparse_cls
