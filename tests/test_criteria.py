"""Pruning-at-init criteria (``ks.criteria``): one family resolved from
criteria and scorers alike, serializable, and open to a user's class."""

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse.utils import sparse_layers

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _batch(n=32, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 16).astype("float32"), rng.randint(0, 4, size=n)


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(12, activation="tanh", name="d1"),
        keras.layers.Dense(4, name="d2"),
    ])


def _masks(model):
    return [_np(layer.get_mask("kernel")).astype(bool) for layer in sparse_layers(model)]


@pytest.mark.parametrize("alias, cls", [
    ("snip", ks.criteria.ScorerCriterion),
    ("magnitude", ks.criteria.ScorerCriterion),
    ("grasp", ks.criteria.GraSP),
    ("synflow", ks.criteria.SynFlow),
])
def test_aliases_resolve_to_criteria(alias, cls):
    criterion = ks.criteria.get(alias)
    assert type(criterion) is cls
    again = ks.criteria.deserialize(ks.criteria.serialize(criterion))
    assert again == criterion
    assert keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(criterion)) == criterion


def test_snip_is_the_saliency_scorer_used_once():
    # One meaning of "snip": the criterion wraps the scorer of that alias.
    criterion = ks.criteria.get("snip")
    assert type(criterion.scorer) is ks.scorers.SaliencyScorer
    assert criterion.needs_data
    assert criterion == ks.criteria.get(ks.scorers.SaliencyScorer())
    assert criterion == ks.criteria.get(ks.scorers.serialize(ks.scorers.get("snip")))
    assert criterion.layer_scorer() is criterion.scorer
    assert not ks.criteria.get("magnitude").needs_data


@pytest.mark.parametrize("make", [
    lambda: "snip",
    lambda: ks.scorers.SaliencyScorer(),
    lambda: ks.criteria.ScorerCriterion("saliency"),
    lambda: ks.criteria.serialize(ks.criteria.get("snip")),
])
def test_every_spelling_of_snip_gives_the_same_masks(make):
    x, y = _batch()
    reference = _masks(ks.prune_at_init(_mlp(), (x, y), 0.7, scorer="snip", loss=LOSS))
    masks = _masks(ks.prune_at_init(_mlp(), (x, y), 0.7, scorer=make(), loss=LOSS))
    for a, b in zip(reference, masks):
        np.testing.assert_array_equal(a, b)


def test_rounds_argument_sets_the_synflow_rounds():
    by_argument = _masks(ks.prune_at_init(_mlp(), None, 0.8, scorer="synflow", rounds=3,
                                          distribution="global"))
    by_object = _masks(ks.prune_at_init(_mlp(), None, 0.8, scorer=ks.criteria.SynFlow(3),
                                        distribution="global"))
    one_round = _masks(ks.prune_at_init(_mlp(), None, 0.8, scorer=ks.criteria.SynFlow(1),
                                        distribution="global"))
    for a, b in zip(by_argument, by_object):
        np.testing.assert_array_equal(a, b)
    # Three rounds are not one round: the argument did reach the criterion.
    assert any(not np.array_equal(a, b) for a, b in zip(by_argument, one_round))


def test_user_criterion_is_one_class():
    @ks.criteria.register("test_gradient_magnitude")
    class GradientMagnitude(ks.criteria.Criterion):
        """Keep the weights with the largest |g| (ignores w)."""

        needs_data = True

        def __init__(self, power=1.0):
            self.power = power

        def prune(self, context, targets):
            scores = [np.abs(g) ** self.power for g in context.loss_gradients()]
            context.set_masks(scores, targets)

        def get_config(self):
            return {"power": self.power}

    x, y = _batch()
    dense = _mlp()
    model = ks.prune_at_init(dense, (x, y), 0.75, scorer="test_gradient_magnitude", loss=LOSS)
    # Reference: the gradients of the dense model (masks are all ones before).
    variables = [layer.kernel for layer in dense.layers]
    grads = _loss_gradients(dense, variables, x, y)
    for mask, g in zip(_masks(model), grads):
        assert (~mask).sum() == round(0.75 * mask.size)
        assert np.abs(g)[mask].min() >= np.abs(g)[~mask].max()
    # The layers keep the default (magnitude) scorer; the criterion round-trips.
    assert all(type(l.scorer) is ks.scorers.MagnitudeScorer for l in sparse_layers(model))
    criterion = ks.criteria.get("test_gradient_magnitude")
    assert isinstance(criterion, GradientMagnitude)
    again = ks.criteria.deserialize(ks.criteria.serialize(GradientMagnitude(2.0)))
    assert isinstance(again, GradientMagnitude) and again.power == 2.0


def _loss_gradients(model, variables, x, y):
    from keras_sparse import backend

    def loss_of(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return LOSS(y, model(x, training=True))

    grads = backend.gradient_function(loss_of)([keras.ops.convert_to_tensor(v) for v in variables])
    return [_np(g) for g in grads]


def test_criterion_without_data_cannot_read_gradients():
    class Forgetful(ks.criteria.Criterion):
        def prune(self, context, targets):
            context.loss_gradients()

    with pytest.raises(ValueError, match="needs_data"):
        ks.prune_at_init(_mlp(), None, 0.5, scorer=Forgetful())


def test_bad_criteria_name_the_argument():
    with pytest.raises(ValueError, match="scorer='luck'"):
        ks.prune_at_init(_mlp(), None, 0.5, scorer="luck")
    with pytest.raises(ValueError, match="criterion=3"):
        ks.criteria.get(3)
    with pytest.raises(ValueError, match="rounds=0"):
        ks.criteria.SynFlow(0)
    with pytest.raises(ValueError, match="scorer alias. Received: alias='magnitude'"):
        ks.criteria.register("magnitude")
    with pytest.raises(ValueError, match="taken by GraSP"):
        ks.criteria.register("grasp")
    with pytest.raises(TypeError, match="subclasses of Criterion"):
        ks.criteria.register("test_not_a_criterion")(ks.scorers.MagnitudeScorer)
