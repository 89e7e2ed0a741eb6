"""Distributions: *how much* sparsity each layer gets for a model target."""

from keras_sparse import config as config_lib
from keras_sparse.checks import check_number
from keras_sparse.checks import type_error
from keras_sparse.ops.formulas import erk_densities
from keras_sparse.ops.masks import check_sparsity

_REGISTRY = {}

__all__ = ["Distribution", "Uniform", "Global", "ERK", "PerLayer", "get"]


class Distribution(config_lib.ConfigObject):
    """Base class: map a model-level sparsity to per-layer sparsities.

    Attributes:
        is_global: layers share one magnitude threshold chosen at every
            update instead of a fixed per-layer sparsity.
        needs_shapes: :meth:`layer_sparsities` reads the weight shapes, so
            the layers must be built before converting (the default: a new
            distribution is assumed to need them).
        own_sparsities: the distribution names each layer's sparsity
            itself, so a model-level target is optional.
    """

    is_global = False
    needs_shapes = True
    own_sparsities = False

    def layer_sparsities(self, shapes, sparsity):
        """Per-layer sparsities.

        Args:
            shapes: dict ``layer name -> list of weight shapes``.
            sparsity: the model-level target.

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
    ``"global"``, ``"erk"``), a dict ``layer name -> sparsity``, or a
    serialized config."""
    if identifier is None:
        identifier = "uniform"
    if isinstance(identifier, dict) and "class_name" not in identifier:
        return PerLayer(identifier)
    return config_lib.lookup(identifier, Distribution, _REGISTRY, "distribution")


serialize = config_lib.serialize


deserialize, register = config_lib.family_api(Distribution, _REGISTRY, "distribution")


__all__ += [n for n in ("get", "serialize", "deserialize", "register") if n not in __all__]
