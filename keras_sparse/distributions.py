"""Distributions: *how much* sparsity each layer gets for a model target."""

from keras_sparse import config as config_lib
from keras_sparse.checks import check_number
from keras_sparse.checks import type_error
from keras_sparse.ops.allocation import lamp_removals
from keras_sparse.ops.formulas import erk_densities
from keras_sparse.ops.masks import check_sparsity

_REGISTRY = {}

__all__ = ["Distribution", "Uniform", "Global", "ERK", "LAMP", "PerLayer", "get"]


class Distribution(config_lib.ConfigObject):
    """Base class: map a model-level sparsity to per-layer sparsities.

    Attributes:
        is_global: layers share one magnitude threshold chosen at every
            update instead of a fixed per-layer sparsity.
        needs_weights: the per-layer sparsities depend on the weight
            values, not only on their shapes: ``ks.prune`` then calls
            ``layer_sparsities(shapes, sparsity, weights=...)`` (a
            distribution that leaves it ``False`` is called without
            ``weights``, so subclasses written for shapes only keep working).
        needs_shapes: :meth:`layer_sparsities` reads the weight shapes, so
            the layers must be built before converting (the default: a new
            distribution is assumed to need them).
        own_sparsities: the distribution names each layer's sparsity
            itself, so a model-level target is optional.
    """

    is_global = False
    needs_weights = False
    needs_shapes = True
    own_sparsities = False

    def layer_sparsities(self, shapes, sparsity):
        """Per-layer sparsities.

        Args:
            shapes: dict ``layer name -> list of weight shapes``.
            sparsity: the model-level target.
            weights: only passed when :attr:`needs_weights` is ``True``:
                dict ``layer name -> list of numpy weight values``, in the
                order of ``shapes`` (a sparse layer's removed entries are 0).

        Returns:
            dict ``layer name -> sparsity``.
        """
        raise NotImplementedError


@config_lib.register(_REGISTRY, "uniform", name="UniformDistribution")
class Uniform(Distribution):
    """Every layer gets the same sparsity.

    Example:
    >>> ks.distributions.Uniform().layer_sparsities({"d": [(4, 2)]}, 0.5)
    {'d': 0.5}
    """

    needs_shapes = False

    def layer_sparsities(self, shapes, sparsity):
        return {name: sparsity for name in shapes}


@config_lib.register(_REGISTRY, "global", name="GlobalDistribution")
class Global(Distribution):
    """One threshold across all layers: the lowest scores of the whole model
    are removed, so layers end at different sparsities (global magnitude
    pruning). Only the unstructured pattern supports it.

    Example:
    >>> ks.prune(model, 0.9, distribution="global")
    """

    is_global = True

    def layer_sparsities(self, shapes, sparsity):
        return {name: sparsity for name in shapes}


@config_lib.register(_REGISTRY, "erk", name="ERKDistribution")
class ERK(Distribution):
    """Erdős–Rényi-Kernel: density ∝ ``sum(shape) / prod(shape)``, with
    layers that would exceed density 1 made dense (Evci et al. 2020).

    A layer with several masked weights (SeparableConv2D) gets the
    size-weighted mean of their ERK sparsities.

    Args:
        power_scale: exponent on the ERK ratio (1.0 = ERK, 0.0 = uniform).

    Example:
    >>> ks.distributions.ERK().layer_sparsities(
    ...     {"a": [(64, 300)], "b": [(300, 10)]}, 0.9)
    """

    def __init__(self, power_scale=1.0):
        self.power_scale = check_number(power_scale, "power_scale")

    def layer_sparsities(self, shapes, sparsity):
        sparsity = check_sparsity(sparsity)
        flat = [(name, shape) for name, group in shapes.items() for shape in group]
        if not flat:
            return {}
        densities = erk_densities(
            [s for _, s in flat], 1.0 - sparsity, self.power_scale
        )
        totals, kept = {}, {}
        for (name, shape), density in zip(flat, densities):
            size = 1
            for d in shape:
                size *= d
            totals[name] = totals.get(name, 0) + size
            kept[name] = kept.get(name, 0.0) + density * size
        # Dense layers get sparsity 0; keep values inside [0, 1).
        return {
            name: min(max(1.0 - kept[name] / totals[name], 0.0), 0.999999)
            for name in shapes
        }

    def get_config(self):
        return {"power_scale": self.power_scale}


@config_lib.register(_REGISTRY, "lamp", name="LAMPDistribution")
class LAMP(Distribution):
    """Layer-adaptive magnitude pruning (LAMP): one global threshold on the
    LAMP scores of the weights sets each layer's sparsity.

    With a layer's weights sorted by increasing magnitude, weight ``u``
    scores ``w_u**2 / sum(w_v**2 for v >= u)`` (the largest scores 1); the
    ``round(sparsity * total)`` lowest scores of the whole model are
    removed, each weight keeping at least one entry
    (:func:`keras_sparse.ops.lamp_removals`). Inside a layer the lowest
    scores are the smallest weights, so the layer's sparsity is all that is
    kept: masks are then chosen by the layer's scorer and pattern at that
    sparsity (magnitude, unstructured: the same weights). The sparsities are
    computed once, from the weights ``ks.prune`` receives: prune a trained
    model (at initialization LAMP mostly follows the layer sizes).

    Reference: J. Lee et al., "Layer-adaptive sparsity for the
    magnitude-based pruning", ICLR 2021.

    Example:
    >>> ks.prune(trained_model, 0.95, distribution="lamp")
    >>> ks.distributions.LAMP().layer_sparsities(
    ...     {"a": [(3,)], "b": [(2,)]}, 0.4,
    ...     weights={"a": [np.array([1.0, 2.0, 3.0])], "b": [np.array([5.0, 5.0])]})
    {'a': 0.6666666666666666, 'b': 0.0}
    """

    needs_weights = True

    def layer_sparsities(self, shapes, sparsity, weights=None):
        sparsity = check_sparsity(sparsity)
        if weights is None:
            raise ValueError(
                "The LAMP distribution needs the weight values: pass "
                "weights={layer name: [arrays]} (ks.prune does). Received: weights=None"
            )
        names = list(shapes)
        missing = [name for name in names if name not in weights]
        if missing:
            raise ValueError(
                f"`weights` lacks layers {missing} of `shapes`. "
                f"Received: weights with keys {list(weights)}"
            )
        flat = [(name, w) for name in names for w in weights[name]]
        if not flat:
            return {}
        total = sum(int(w.size) for _, w in flat)
        removed = lamp_removals(
            [w for _, w in flat],
            min(int(round(sparsity * total)), total - sum(1 for _, w in flat if w.size)),
        )
        sizes, gone = {}, {}
        for (name, w), count in zip(flat, removed):
            sizes[name] = sizes.get(name, 0) + int(w.size)
            gone[name] = gone.get(name, 0) + count
        return {name: gone.get(name, 0) / sizes[name] if sizes.get(name) else 0.0
                for name in names}


@config_lib.register(_REGISTRY, "per_layer", name="PerLayerDistribution")
class PerLayer(Distribution):
    """Explicit sparsity per layer name; unlisted layers are not pruned.

    Args:
        sparsities: dict ``layer name -> sparsity``.

    Example:
    >>> ks.prune(model, None, distribution={"dense_1": 0.9, "dense_2": 0.5})
    """

    needs_shapes = False
    own_sparsities = True

    def __init__(self, sparsities=None):
        if sparsities is None:
            sparsities = {}
        if not isinstance(sparsities, dict) or not all(isinstance(k, str) for k in sparsities):
            raise type_error("sparsities", sparsities, "a dict mapping layer names to sparsities")
        sparsities = dict(sparsities)
        for name, value in sparsities.items():
            check_sparsity(value, f"distribution[{name!r}]")
        self.sparsities = sparsities

    def layer_sparsities(self, shapes, sparsity):
        return {n: s for n, s in self.sparsities.items() if n in shapes}

    def get_config(self):
        return {"sparsities": dict(self.sparsities)}


def get(identifier):
    """Resolve a distribution from an instance, an alias (``"uniform"``,
    ``"global"``, ``"erk"``, ``"lamp"``), a dict ``layer name -> sparsity``, or a
    serialized config."""
    if identifier is None:
        identifier = "uniform"
    if isinstance(identifier, dict) and "class_name" not in identifier:
        return PerLayer(identifier)
    return config_lib.lookup(identifier, Distribution, _REGISTRY, "distribution")


serialize = config_lib.serialize


deserialize, register = config_lib.family_api(Distribution, _REGISTRY, "distribution")


__all__ += [n for n in ("get", "serialize", "deserialize", "register") if n not in __all__]
