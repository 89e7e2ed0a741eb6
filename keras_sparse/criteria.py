"""Criteria: how :func:`keras_sparse.prune_at_init` chooses the masks of a
fresh model.

A criterion answers for the whole model at once: it reads what it needs from
a *context* (the loss gradients, the Hessian-gradient product, SynFlow's
flow; computed by floor 4 on the model) and writes the masks through it.

Every scorer is a criterion too: a :class:`Scorer` (or its alias, such as
``"snip"``, ``"magnitude"``, ``"random"``) is used once, per weight, as
:class:`ScorerCriterion`. So ``"snip"`` has one meaning everywhere: the
saliency scorer ``|g ⊙ w|``. The criteria that cannot be written per weight
are their own classes: :class:`GraSP` (``"grasp"``) and :class:`SynFlow`
(``"synflow"``).

A new criterion is one class: subclass :class:`Criterion`, implement
:meth:`Criterion.prune`, and register it with :func:`register`.

The context passed to :meth:`Criterion.prune` offers:

* ``weights()``: the masked latent weights, one per pruned weight;
* ``loss_gradients()``: the loss gradient of each (float32 numpy, averaged
  over the batches; needs ``needs_data``);
* ``grasp_scores()``: ``w ⊙ Hg`` of each (needs ``needs_data``);
* ``synflow_flow()``: a function ``() -> scores`` giving SynFlow's
  ``|w| ⊙ ∂R/∂|w|`` for the current masks;
* ``linearized()``: a context manager that replaces every nonlinearity by
  the identity;
* ``set_masks(scores, targets, rescale=False)``: keep the highest scores of
  each weight at its target sparsity (or one global threshold).
"""

from keras_sparse import config as config_lib
from keras_sparse import scorers as scorers_lib
from keras_sparse.checks import check_int

_REGISTRY = {}

__all__ = ["Criterion", "ScorerCriterion", "GraSP", "SynFlow"]


class Criterion(config_lib.ConfigObject):
    """Base class for pruning-at-initialization criteria.

    Attributes:
        needs_data: :func:`keras_sparse.prune_at_init` needs batches and a
            loss (the context's ``loss_gradients`` and ``grasp_scores``).

    Example:
    >>> @ks.criteria.register("largest_first")
    ... class LargestFirst(ks.criteria.Criterion):
    ...     def prune(self, context, targets):
    ...         context.set_masks([np.abs(w) for w in context.weights()], targets)
    >>> model = ks.prune_at_init(model, None, 0.5, scorer="largest_first")
    """

    needs_data = False

    def layer_scorer(self):
        """The scorer the pruned layers keep after the masks are set (what a
        later pruning callback would use). Default: magnitude.

        Returns:
            A :class:`keras_sparse.scorers.Scorer`.
        """
        return scorers_lib.MagnitudeScorer()

    def prune(self, context, targets):
        """Set the masks of every pruned weight through ``context``.

        Args:
            context: the model's pruning context (see the module docstring).
            targets: the target sparsity of each weight, in the order of
                ``context.weights()``.

        Returns:
            None.
        """
        raise NotImplementedError


@config_lib.register(_REGISTRY)
class ScorerCriterion(Criterion):
    """One shot of a per-weight scorer: the highest ``scorer.score(w, g)``
    are kept (``g`` the loss gradient on the data, for gradient scorers).

    With the saliency scorer this is SNIP (Lee et al., ICLR 2019):
    ``|g ⊙ w|``. A scorer with ``rescale_survivors`` (``"random"``) rescales
    the kept weights of each unit as it does during training.

    Args:
        scorer: a scorer or its alias (default ``"snip"``).

    Example:
    >>> ks.criteria.get("snip")
    ScorerCriterion(scorer=...)
    """

    def __init__(self, scorer="snip"):
        self.scorer = scorers_lib.get(scorer)

    @property
    def needs_data(self):
        return self.scorer.needs_gradient

    def layer_scorer(self):
        return self.scorer

    def prune(self, context, targets):
        if self.scorer.needs_gradient:
            grads = context.loss_gradients()
            scores = [self.scorer.score(w, g) for w, g in zip(context.weights(), grads)]
        else:
            scores = [self.scorer.score(w) for w in context.weights()]
        context.set_masks(scores, targets, rescale=self.scorer.rescale_survivors)

    def get_config(self):
        return {"scorer": scorers_lib.serialize(self.scorer)}


@config_lib.register(_REGISTRY, "grasp")
class GraSP(Criterion):
    """Gradient Signal Preservation: keep the largest ``w ⊙ Hg``.

    GraSP removes the largest ``-w ⊙ Hg``: the weights whose removal reduces
    gradient flow least (``H`` the Hessian of the loss on the data, ``g``
    its gradient, both on the same batches; no temperature is applied).

    Reference: C. Wang, G. Zhang, R. Grosse, "Picking Winning Tickets Before
    Training by Preserving Gradient Flow", ICLR 2020.

    Example:
    >>> model = ks.prune_at_init(model, (x, y), 0.9, scorer="grasp", loss="mse")
    """

    needs_data = True

    def prune(self, context, targets):
        context.set_masks(context.grasp_scores(), targets, rescale=False)


@config_lib.register(_REGISTRY, "synflow")
class SynFlow(Criterion):
    """Iterative synaptic flow, data-free.

    For ``rounds`` rounds, score ``|w| ⊙ ∂R/∂|w|`` with ``R = 1ᵀ f(1)`` the
    output of the network with every parameter replaced by its absolute
    value, an all-ones input and every nonlinearity replaced by the identity,
    then prune to the round's sparsity ``1 - (1 - s)^(k / rounds)``. Pruned
    weights stop carrying flow and the ranking is repeated, so no layer is
    removed entirely (no layer collapse). Usually used with
    ``distribution="global"``.

    Reference: H. Tanaka, D. Kunin, D. Yamins, S. Ganguli, "Pruning neural
    networks without any data by iteratively conserving synaptic flow",
    NeurIPS 2020.

    Args:
        rounds: number of score-and-prune rounds.

    Example:
    >>> model = ks.prune_at_init(model, None, 0.99, scorer=ks.criteria.SynFlow(rounds=50),
    ...                          distribution="global")
    """

    def __init__(self, rounds=100):
        self.rounds = check_int(rounds, "rounds", minimum=1)

    def prune(self, context, targets):
        scores = context.synflow_flow()
        with context.linearized():
            for k in range(1, self.rounds + 1):
                round_targets = [1.0 - (1.0 - t) ** (k / self.rounds) for t in targets]
                context.set_masks(scores(), round_targets, rescale=False)

    def get_config(self):
        return {"rounds": self.rounds}


def lookup(identifier, arg_name="criterion"):
    """:func:`get`, naming ``arg_name`` in its errors."""
    if isinstance(identifier, Criterion):
        return identifier
    if isinstance(identifier, scorers_lib.Scorer):
        return ScorerCriterion(identifier)
    if isinstance(identifier, str):
        key = identifier.strip().lower()
        if key in _REGISTRY:
            return _REGISTRY[key]()
        if key in scorers_lib.REGISTRY:
            return ScorerCriterion(scorers_lib.get(key))
        names = sorted(set(_REGISTRY) | set(scorers_lib.REGISTRY))
        raise ValueError(
            f"Unknown {arg_name}. Expected one of {names}, a Criterion or a Scorer. "
            f"Received: {arg_name}={identifier!r}"
        )
    if isinstance(identifier, dict):
        try:
            return config_lib.lookup(identifier, Criterion, _REGISTRY, arg_name)
        except ValueError:
            scorer = config_lib.lookup(identifier, scorers_lib.Scorer, scorers_lib.REGISTRY,
                                       arg_name)
            return ScorerCriterion(scorer)
    raise ValueError(
        f"Could not interpret `{arg_name}` as a Criterion or a Scorer. "
        f"Received: {arg_name}={identifier!r}"
    )


def get(identifier):
    """Resolve a criterion from an instance, an alias (``"grasp"``,
    ``"synflow"``, or any scorer alias such as ``"snip"``), a scorer, or a
    serialized config.

    Args:
        identifier: what to resolve (``None`` gives SNIP).

    Returns:
        A :class:`Criterion`.

    Example:
    >>> ks.criteria.get("synflow")
    SynFlow(rounds=100)
    """
    if identifier is None:
        identifier = "snip"
    return lookup(identifier)


serialize = config_lib.serialize


deserialize, _register = config_lib.family_api(Criterion, _REGISTRY, "criterion")


def register(*aliases, package="Custom", name=None):
    for alias in aliases:
        if alias in scorers_lib.REGISTRY:
            # A criterion alias would hide the scorer of that name.
            raise ValueError(
                f"The criterion alias {alias!r} is a scorer alias. Received: alias={alias!r}"
            )
    return _register(*aliases, package=package, name=name)


register.__doc__ = _register.__doc__


__all__ += ["get", "serialize", "deserialize", "register"]
