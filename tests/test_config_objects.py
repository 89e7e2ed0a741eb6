"""The floor-2 contract shared by every registered config object, plus the
registration / lookup machinery in ``keras_sparse/config.py`` and scorers.

The shared suite walks each family's alias registry, so a newly registered
class is covered without editing this file (it is built with ``cls()`` unless
it has an entry in ``EXAMPLES``).
"""

import json
import re

import keras
import numpy as np
import pytest
from conftest import to_np

import keras_sparse as ks
from keras_sparse import config as config_lib
from keras_sparse import criteria
from keras_sparse import controllers
from keras_sparse import distributions
from keras_sparse import gates
from keras_sparse import patterns
from keras_sparse import schedules
from keras_sparse import scorers

FAMILIES = {
    "schedules": (schedules, schedules.PruningSchedule),
    "patterns": (patterns, patterns.Pattern),
    "scorers": (scorers, scorers.Scorer),
    "distributions": (distributions, distributions.Distribution),
    "criteria": (criteria, criteria.Criterion),
    "gates": (gates, gates.Gate),
    "controllers": (controllers, controllers.Controller),
}

# Non-default instances where a class has arguments, so the round trip is
# checked on values that differ from the defaults.
EXAMPLES = {
    "ConstantSparsity": lambda: schedules.ConstantSparsity(0.7, 10, 500, 50),
    "PolynomialDecay": lambda: schedules.PolynomialDecay(0.1, 0.8, 5, 105, 2, 10),
    "OneShot": lambda: schedules.OneShot(3, 0.6),
    "NByM": lambda: patterns.NByM(1, 4),
    "Block": lambda: patterns.Block((4, 1)),
    "ERK": lambda: distributions.ERK(0.5),
    "PerLayer": lambda: distributions.PerLayer({"a": 0.5, "b": 0.25}),
    "SynFlow": lambda: criteria.SynFlow(7),
    "HardConcrete": lambda: gates.HardConcrete(0.8, "unit", 50, 0.1, 5.0, 1.0, 1e-3, seed=4),
    "SoftThreshold": lambda: gates.SoftThreshold(0.7, "unit", 20, 0.2, 3.0, -6.0, 0.0, 0.5),
    "PI": lambda: controllers.PI(1.0, 0.5, 2.0, 3.0, 0.25),
    "DualAscent": lambda: controllers.DualAscent(0.5, 0.25),
}

# Aliases that deliberately do not resolve through ``get`` on their own.
NEEDS_ARGUMENTS = {("patterns", "block")}


def _registry(module):
    """A family's alias -> class dict (public ``REGISTRY`` or ``_REGISTRY``)."""
    registry = getattr(module, "REGISTRY", None)
    return registry if registry is not None else module._REGISTRY


def _classes():
    params = []
    for family, (module, _) in FAMILIES.items():
        for cls in sorted(set(_registry(module).values()), key=lambda c: c.__name__):
            params.append(pytest.param(family, cls, id=f"{family}.{cls.__name__}"))
    return params


def _aliases():
    params = []
    for family, (module, _) in FAMILIES.items():
        for alias, cls in sorted(_registry(module).items()):
            params.append(pytest.param(family, alias, cls, id=f"{family}.{alias}"))
    return params


def _instance(cls):
    return EXAMPLES.get(cls.__name__, cls)()


def test_every_family_has_registered_classes():
    for family, (module, base) in FAMILIES.items():
        assert _registry(module), family
        for cls in _registry(module).values():
            assert issubclass(cls, base)


@pytest.mark.parametrize("family,cls", _classes())
def test_registered_class_config_round_trip(family, cls):
    module, base = FAMILIES[family]
    obj = _instance(cls)
    assert isinstance(obj, base)

    config = obj.get_config()
    assert isinstance(config, dict)
    config = json.loads(json.dumps(config))  # JSON-safe
    restored = cls.from_config(config)
    assert type(restored) is cls
    assert restored == obj
    assert restored.get_config() == obj.get_config()
    assert hash(restored) == hash(obj)
    assert repr(restored) == repr(obj)
    assert repr(obj).startswith(f"{cls.__name__}(")


@pytest.mark.parametrize("family,cls", _classes())
def test_registered_class_keras_serialization(family, cls):
    module, _ = FAMILIES[family]
    obj = _instance(cls)
    assert keras.saving.get_registered_name(cls).startswith(f"keras_sparse>{cls.__name__}")
    serialized = keras.saving.serialize_keras_object(obj)
    assert module.serialize(obj) == serialized
    text = json.dumps(serialized)
    restored = keras.saving.deserialize_keras_object(json.loads(text))
    assert type(restored) is cls and restored == obj
    # The family's get() takes the serialized form back.
    via_get = module.get(json.loads(text))
    assert type(via_get) is cls and via_get == obj
    # An instance passes through get() unchanged.
    assert module.get(obj) is obj


@pytest.mark.parametrize("family,cls", _classes())
def test_registered_class_has_a_snake_case_alias(family, cls):
    module, _ = FAMILIES[family]
    aliases = [a for a, c in _registry(module).items() if c is cls]
    assert aliases
    for alias in aliases:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", alias), alias


@pytest.mark.parametrize("family,alias,cls", _aliases())
def test_alias_lookup_returns_that_class(family, alias, cls):
    module, _ = FAMILIES[family]
    if (family, alias) in NEEDS_ARGUMENTS:
        with pytest.raises(ValueError, match=alias):
            module.get(alias)
        return
    for spelling in [alias, alias.upper(), f" {alias} "]:
        obj = module.get(spelling)
        assert type(obj) is cls
        assert obj == cls()
    # Round trip of the alias-built object as well.
    assert cls.from_config(module.get(alias).get_config()) == module.get(alias)


def test_equality_is_by_type_and_config():
    assert distributions.Uniform() != distributions.Global()  # same (empty) config
    assert patterns.NByM(2, 4) == patterns.NByM(2, 4)
    assert patterns.NByM(2, 4) != patterns.NByM(1, 4)
    assert patterns.NByM(2, 4) != "NByM(n=2, m=4)"
    assert len({patterns.NByM(2, 4), patterns.NByM(2, 4), patterns.NByM(1, 4)}) == 2
    assert len({distributions.PerLayer({"a": 0.5}), distributions.PerLayer({"a": 0.5})}) == 1


# ---------------------------------------------------------------------------
# config.py machinery on a private family


_TEST_REGISTRY = {}


class _Widget(config_lib.ConfigObject):
    pass


@config_lib.register(_TEST_REGISTRY, "plain_widget", "widget")
class _PlainWidget(_Widget):
    def __init__(self, size=1):
        self.size = size

    def get_config(self):
        return {"size": self.size}


class _Other(config_lib.ConfigObject):
    pass


def _parse(text):
    if text.startswith("w"):
        rest = text[1:]
        return _PlainWidget(int(rest)) if rest.isdigit() else None
    return None


def _lookup(identifier, parse=None):
    return config_lib.lookup(identifier, _Widget, _TEST_REGISTRY, "widget", parse)


def test_register_records_aliases_and_keras_name():
    assert _TEST_REGISTRY == {"plain_widget": _PlainWidget, "widget": _PlainWidget}
    assert keras.saving.get_registered_name(_PlainWidget) == "keras_sparse>_PlainWidget"
    assert config_lib.PACKAGE == "keras_sparse"


def test_lookup_instance_alias_and_dict():
    w = _PlainWidget(3)
    assert _lookup(w) is w
    assert _lookup("Widget") == _PlainWidget()
    assert _lookup(keras.saving.serialize_keras_object(w)) == w


def test_lookup_parse_string():
    assert _lookup("w7", _parse) == _PlainWidget(7)
    with pytest.raises(ValueError, match="widget='wx'"):
        _lookup("wx", _parse)


def test_lookup_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"Expected one of \['plain_widget', 'widget'\]"):
        _lookup("gadget")
    with pytest.raises(ValueError, match="as a _Widget. Received: widget=3"):
        _lookup(3)
    with pytest.raises(ValueError, match="widget=_Other"):
        _lookup(_Other())


def test_serialize_none_and_object():
    assert config_lib.serialize(None) is None
    assert config_lib.serialize(_PlainWidget(2))["config"] == {"size": 2}


def test_config_object_defaults():
    obj = _Other()
    assert obj.get_config() == {}
    assert _Other.from_config({}) == obj
    assert repr(obj) == "_Other()"
    assert repr(_PlainWidget(2)) == "_PlainWidget(size=2)"


# ---------------------------------------------------------------------------
# scorers


def test_magnitude_scorer(rng):
    w = rng.normal(size=(5, 4)).astype("float32")
    w[0, 0] = 0.0
    s = scorers.MagnitudeScorer()
    np.testing.assert_array_equal(to_np(s.score(w)), np.abs(w))
    np.testing.assert_array_equal(to_np(s.score(w, gradient=np.ones_like(w))), np.abs(w))
    assert not s.needs_gradient


def test_magnitude_scorer_docstring_example():
    np.testing.assert_array_equal(
        to_np(scorers.get("magnitude").score(np.array([-3.0, 1.0]))), [3.0, 1.0]
    )


def test_scorer_lookup():
    assert scorers.get(None) == scorers.MagnitudeScorer()
    assert type(scorers.get("magnitude")) is scorers.MagnitudeScorer
    with pytest.raises(ValueError, match="scorer='gradient_norm'"):
        scorers.get("gradient_norm")
    with pytest.raises(ValueError, match="scorer=0.5"):
        scorers.get(0.5)


def test_base_scorer_is_abstract():
    with pytest.raises(NotImplementedError):
        scorers.Scorer().score(np.ones(3))


def test_registered_names_are_unique_across_the_package():
    import importlib
    import inspect
    import pkgutil

    seen = {}
    for info in pkgutil.walk_packages(ks.__path__, "keras_sparse."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if not inspect.isclass(obj) or obj.__module__ != module.__name__:
                continue
            name = keras.saving.get_registered_name(obj)
            if not name.startswith("keras_sparse>"):
                continue
            assert seen.setdefault(name, obj) is obj, f"{name} names two classes"
            assert keras.saving.get_registered_object(name) is obj
    assert len(seen) > 20
