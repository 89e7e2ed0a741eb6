"""Every config-object family module has the same public functions: ``get``,
``serialize``, ``deserialize`` and a ``register`` decorator for user classes,
and a registered user class round-trips through configs and aliases."""

import keras
import pytest

import keras_sparse as ks

FAMILIES = {
    "schedules": (ks.schedules, ks.schedules.PruningSchedule, ks.schedules.ConstantSparsity(0.5)),
    "patterns": (ks.patterns, ks.patterns.Pattern, ks.patterns.get("2:4")),
    "scorers": (ks.scorers, ks.scorers.Scorer, ks.scorers.get("magnitude")),
    "distributions": (ks.distributions, ks.distributions.Distribution,
                      ks.distributions.get("erk")),
    "quantizers": (ks.quantizers, ks.quantizers.Quantizer, ks.quantizers.get("ste_sign")),
    "methods": (ks.methods, ks.methods.SparsityMethod, ks.methods.get("rigl")),
    "criteria": (ks.criteria, ks.criteria.Criterion, ks.criteria.get("synflow")),
    "gates": (ks.gates, ks.gates.Gate, ks.gates.get("l0")),
    "controllers": (ks.controllers, ks.controllers.Controller, ks.controllers.PI(kp=1.0)),
}

_SINGULAR = {"methods": "method", "criteria": "criterion"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_module_api(family):
    module, base, example = FAMILIES[family]
    for name in ("get", "serialize", "deserialize", "register"):
        assert callable(getattr(module, name)), (family, name)
        assert name in module.__all__, (family, name)
    config = module.serialize(example)
    again = module.deserialize(config)
    assert type(again) is type(example)
    assert again.get_config() == example.get_config()
    assert module.deserialize(None) is None
    with pytest.raises(TypeError, match="config"):
        module.deserialize("not a dict")
    with pytest.raises(ValueError, match=_SINGULAR.get(family, family.rstrip("s"))):
        module.deserialize({"class_name": "NoSuchClass", "config": {}})


def test_register_user_scorer_by_alias_and_config():
    @ks.scorers.register("test_squared_magnitude")
    class SquaredMagnitude(ks.scorers.Scorer):
        def score(self, weight, gradient=None):
            return keras.ops.square(weight)

    scorer = ks.scorers.get("test_squared_magnitude")
    assert isinstance(scorer, SquaredMagnitude)
    config = ks.scorers.serialize(scorer)
    assert isinstance(ks.scorers.deserialize(config), SquaredMagnitude)
    layer = ks.layers.SparseDense(3, scorer="test_squared_magnitude",
                                  schedule=ks.schedules.ConstantSparsity(0.5))
    layer.build((None, 4))
    clone = ks.layers.SparseDense.from_config(layer.get_config())
    assert isinstance(clone.scorer, SquaredMagnitude)


def test_register_rejects_bad_aliases_and_classes():
    with pytest.raises(ValueError, match="alias='Upper'"):
        ks.scorers.register("Upper")
    with pytest.raises(ValueError, match="taken by MagnitudeScorer"):
        ks.scorers.register("magnitude")
    with pytest.raises(TypeError, match="subclasses of Scorer"):
        ks.scorers.register("test_not_a_scorer")(int)
    assert "test_not_a_scorer" not in ks.scorers.base.REGISTRY
