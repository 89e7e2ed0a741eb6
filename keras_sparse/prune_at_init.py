"""Floor 4: pruning at initialization (SNIP, GraSP, SynFlow) and static
sparse initialization.

``prune_at_init`` converts a model with ``ks.prune`` and fixes its masks
before the first training step, from one (or a few) batches of data, or with
no data at all for SynFlow. The masks then stay as they are during ``fit``
(no callback is needed).

Gradients are computed with the backend's autodiff through
``keras.StatelessScope`` (the model's variables are never modified, and
state updates such as BatchNorm statistics made while scoring are
discarded).
"""

import numbers

import keras
from keras import ops

from keras_sparse import criteria as criteria_lib
from keras_sparse import schedules as schedules_lib
from keras_sparse.checks import check_int
from keras_sparse.checks import check_model
from keras_sparse.checks import type_error
from keras_sparse.convert import prune
from keras_sparse import at_init
from keras_sparse.at_init import _apply_initial_masks
from keras_sparse.ops.masks import check_sparsity
from keras_sparse.utils import sparse_layers

__all__ = ["prune_at_init", "apply_initial_masks"]


# ---------------------------------------------------------------- data, loss
def _batches(data, batches):
    if data is None:
        raise ValueError(
            "This criterion needs data: a batch `(x, y)` or an iterable of batches. "
            "Received: data=None"
        )
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and hasattr(data[0], "shape"):
        return [tuple(data[:2])]
    if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
        raise type_error("data", data, "a batch (x, y) or an iterable of such batches")
    found = []
    for item in data:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(
                "Each batch must be a tuple `(x, y)` or `(x, y, sample_weight)`. "
                f"Received a batch of type {type(item).__name__}"
            )
        found.append(tuple(item[:2]))
        if len(found) >= batches:
            break
    if not found:
        raise ValueError("`data` yielded no batch. Received: data=" + repr(data))
    return found


def _loss_function(model, loss):
    if loss is None:
        loss = getattr(model, "loss", None)
    if loss is None:
        raise ValueError(
            "A loss is needed: compile the model or pass `loss=`. Received: loss=None"
        )
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            f"Only a single loss is supported. Received: loss={loss!r}"
        )
    fn = keras.losses.get(loss)

    def compute(y_true, y_pred):
        return ops.mean(fn(y_true, y_pred))

    return compute


def prune_at_init(
    model,
    data=None,
    sparsity=None,
    *,
    scorer="snip",
    distribution="uniform",
    pattern="unstructured",
    layers=None,
    loss=None,
    batches=1,
    rounds=None,
    input_shape=None,
    strict=False,
):
    """Prune a model before training, from one shot of scores.

    The model is converted with :func:`keras_sparse.prune` (same
    ``distribution``, ``pattern``, ``layers``, ``strict``), the masks are
    computed and applied now, and each layer's schedule is set to ``None``:
    the masks stay fixed during ``fit`` with no callback. Pruned weights are
    exact zeros from the first step.

    Criteria (``scorer``, resolved by :func:`keras_sparse.criteria.get`):

    * ``"snip"`` (= ``"saliency"``): keep the largest ``|g ⊙ w|``, ``g`` the
      loss gradient on ``data`` (Lee et al., ICLR 2019).
    * ``"grasp"``: :class:`~keras_sparse.criteria.GraSP`, keep the largest
      ``w ⊙ Hg`` (Wang et al., ICLR 2020).
    * ``"synflow"``: :class:`~keras_sparse.criteria.SynFlow`, data-free and
      iterative (Tanaka et al., NeurIPS 2020); usually used with
      ``distribution="global"``.
    * any registered scorer (``"magnitude"``, ``"random"``, ...) or
      :class:`~keras_sparse.scorers.Scorer`, one shot
      (:class:`~keras_sparse.criteria.ScorerCriterion`); gradient scorers
      get the loss gradient on ``data``. ``"random"`` rescales the kept
      weights of each unit by ``sqrt(k_before / k_after)`` (its fan-in before
      and after), keeping the variance of the dense initializer.
    * any :class:`~keras_sparse.criteria.Criterion`, yours included (one
      class, registered with :func:`keras_sparse.criteria.register`).

    Args:
        model: a Keras model (Sequential, functional or subclassed, built).
        data: a batch ``(x, y)``, or an iterable of such batches (the first
            ``batches`` are averaged). Not used by SynFlow, magnitude, random.
        sparsity: target sparsity in ``[0, 1)``.
        scorer: a criterion, a scorer or an alias of either (default
            ``"snip"``).
        distribution: ``"uniform"``, ``"erk"``, ``"global"`` or a dict, as in
            :func:`keras_sparse.prune`.
        pattern: a pattern (``"global"`` needs ``"unstructured"``).
        layers: which layers, as in :func:`keras_sparse.prune`.
        loss: the loss for SNIP/GraSP (default: the model's compiled loss).
        batches: how many batches of an iterable ``data`` to average.
        rounds: SynFlow iterations (sets the criterion's ``rounds``; by
            default its own, 100 for ``"synflow"``).
        input_shape: SynFlow input shape without the batch axis (for models
            without symbolic inputs).
        strict: as in :func:`keras_sparse.prune`.

    Returns:
        The sparse model (a new model for Sequential/functional inputs,
        compiled like the input if it was; a subclassed model is converted in
        place).

    Example:
    >>> model = ks.prune_at_init(model, (x[:256], y[:256]), 0.9, scorer="snip",
    ...                          loss="sparse_categorical_crossentropy")
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> model.fit(x, y, epochs=10)          # no callback: the masks are fixed
    """
    check_model(model)
    # The target first: a bad sparsity is the error to report, not the
    # missing data or loss it would otherwise trip over.
    if sparsity is not None:
        check_sparsity(sparsity)
    criterion = criteria_lib.lookup("snip" if scorer is None else scorer, "scorer")
    if check_int(rounds, "rounds", minimum=1, allow_none=True) is not None:
        # ``rounds`` sets the criterion's own setting of that name (SynFlow's).
        config = criterion.get_config()
        if "rounds" in config:
            criterion = type(criterion).from_config({**config, "rounds": rounds})
    check_int(batches, "batches", minimum=1)
    if input_shape is not None:
        if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in input_shape
        ):
            raise type_error("input_shape", input_shape, "a tuple of integers or None")
        if any(d < 1 for d in input_shape):
            raise ValueError(
                f"`input_shape` must hold positive sizes. Received: input_shape={input_shape!r}"
            )
    batch_list = loss_fn = None
    if criterion.needs_data:
        batch_list = _batches(data, batches)
        loss_fn = _loss_function(model, loss)
    sparse = prune(
        model,
        sparsity,
        schedule=schedules_lib.OneShot(0),
        pattern=pattern,
        scorer=criterion.layer_scorer(),
        distribution=distribution,
        layers=layers,
        strict=strict,
    )
    chosen = [layer for layer in sparse_layers(sparse) if layer.schedule is not None]
    if not chosen:
        return sparse
    entries = at_init.weight_entries(chosen)
    targets = [layer.schedule.target_sparsity for layer, _ in entries]
    global_pruning = chosen[0].global_pruning
    # The masks are fixed from now on: no schedule, no callback needed.
    for layer in chosen:
        layer.configure_pruning(
            schedule=None,
            pattern=layer.pattern,
            scorer=layer.scorer,
            global_pruning=layer.global_pruning,
        )

    context = at_init.InitContext(sparse, entries, global_pruning, batch_list, loss_fn,
                                  input_shape)
    criterion.prune(context, targets)
    return sparse


def apply_initial_masks(model):
    """Apply now every mask a sparse layer's schedule asks for at step 0,
    with the layer's scorer (scorers that need no gradient only).

    After ``ks.prune(model, s, schedule=ks.schedules.OneShot(0),
    scorer="random")`` this makes the mask and the kernel consistent before
    ``fit`` (evaluation, ``ks.report`` and the first step all see the sparse
    network). The ``Pruning`` callback's update at step 0 then finds the
    masks already in place (the random scorer keeps survivors first, so the
    mask does not change). Layers with ``global_pruning`` are left to the
    callback (they share one threshold). Returns the layers updated.

    Deprecated: :func:`prune_at_init` is the one documented way to make a
    model sparse before training.
    """
    import warnings

    check_model(model)
    warnings.warn(
        "ks.apply_initial_masks is deprecated: make a model sparse before training "
        "with ks.prune_at_init(model, data, sparsity, scorer=...) (data=None for "
        "'random' and 'magnitude').",
        DeprecationWarning,
        stacklevel=2,
    )
    return _apply_initial_masks(sparse_layers(model))


