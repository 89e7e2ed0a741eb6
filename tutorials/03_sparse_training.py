# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Sparse training: GMP, SNIP, SET and RigL on one model
#
# Tutorial 01 pruned a *trained* network gradually. This one compares the main ways to end up with a
# sparse network, all inside an ordinary `model.fit`, on the same MLP and the same budget of epochs:
#
# | method | when the mask is chosen | how |
# |---|---|---|
# | **GMP** (gradual magnitude pruning) | during training, sparsity rising | smallest `|w|` removed, `ks.callbacks.Pruning()` |
# | **static random** (sparse initialization) | before the first step, fixed | random mask, `ks.prune_at_init(model, None, s, scorer="random")` |
# | **SNIP** (pruning at initialization) | before the first step, fixed | largest `|g ⊙ w|` on one batch, `ks.prune_at_init` |
# | **SET** (dynamic sparse training) | before the first step, then moved | drop smallest `|w|`, regrow at random, `ks.callbacks.SET` |
# | **RigL** (dynamic sparse training) | before the first step, then moved | drop smallest `|w|`, regrow largest `|∇L|`, `ks.callbacks.RigL` |
#
# GMP trains dense first and pays for it; the others are *sparse from the start*, so a
# sparse kernel could make every training step cheaper (a mask alone does not: see tutorial 01).
#
# Run it with `python tutorials/03_sparse_training.py` (a few minutes on two CPU cores) or with
# `KERAS_SPARSE_FAST=1` for a quick smoke run (under a minute, lower accuracy). Any Keras backend works.

# %%
import math
import time

import keras

import keras_sparse as ks
from keras_sparse.demo import fast_mode
from keras_sparse.demo import load_digits_split

FAST = fast_mode()  # True when KERAS_SPARSE_FAST=1
EPOCHS = 3 if FAST else 30
BATCH_SIZE = 32
SPARSITY = 0.95

print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, keras_sparse {ks.__version__}")
print("fast mode" if FAST else "full mode", f"- {EPOCHS} epochs per method, target sparsity {SPARSITY:.0%}")

# %% [markdown]
# ## The data and the model
#
# scikit-learn's handwritten digits (8×8 images, bundled, nothing downloaded), a stratified 75/25 split, and
# the 64-300-100-10 MLP used throughout the project's benchmarks. Every method below trains a fresh copy with
# the same seed, optimizer (Adam 1e-3), batch size and number of epochs.

# %%
x_train, x_test, y_train, y_test = load_digits_split(seed=0)
steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
total_steps = EPOCHS * steps_per_epoch
print(x_train.shape, x_test.shape, "steps per epoch:", steps_per_epoch, "total steps:", total_steps)


def make_mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(300, activation="relu", name="hidden1"),
            keras.layers.Dense(100, activation="relu", name="hidden2"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="mlp",
    )


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
results = {}


def train(name, model, callbacks=()):
    """Compile, fit for EPOCHS, record accuracy, sparsity and wall time."""
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS, metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0, callbacks=list(callbacks)
    )
    seconds = time.perf_counter() - start
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    sparsity = ks.report(model, print_fn=None).totals["sparsity"]
    results[name] = dict(accuracy=accuracy, sparsity=sparsity, seconds=seconds)
    print(f"{name:<16} test accuracy {accuracy:7.2%}   sparsity {sparsity:6.1%}   {seconds:5.1f} s")
    return history


# %% [markdown]
# ## Dense baseline

# %%
train("dense", make_mlp())

# %% [markdown]
# ## 1. GMP: prune while training
#
# Gradual magnitude pruning (Zhu & Gupta 2017) starts dense and removes the smallest weights on a cubic
# schedule. We reach the target halfway through and fine-tune the rest. `distribution="erk"` gives each
# layer its own budget (Erdős–Rényi-Kernel: small layers such as the 100×10 output stay denser), the
# same budgets the sparse-from-scratch methods use below.

# %%
schedule = ks.schedules.PolynomialDecay(
    0.0, SPARSITY, begin_step=0, end_step=max(1, total_steps // 2), frequency=max(1, steps_per_epoch // 2)
)
gmp = ks.prune(make_mlp(), SPARSITY, schedule=schedule, distribution="erk")
train("GMP", gmp, [ks.callbacks.Pruning()])
print({layer.name: round(layer.schedule.target_sparsity, 3) for layer in gmp.layers})

# %% [markdown]
# ## 2. Static random sparsity: sparse initialization
#
# `ks.prune_at_init(model, data, sparsity, scorer=...)` is the one way to make a model sparse before
# training: it fixes the masks before it returns (the layers keep no schedule, no callback is needed), so
# the model is sparse before `fit` (evaluate it, report it, save it). With `scorer="random"` no data is
# needed (`data=None`).
#
# **Variance.** A dense initializer (Glorot here) scales weights for a unit's full fan-in `n`. If a unit
# keeps only `k` inputs, its pre-activation variance shrinks by `k/n` and a deep sparse network starts
# with vanishing signals. The random scorer therefore multiplies each unit's surviving weights by
# `sqrt(n / k)` (more generally `sqrt(k_before / k_after)`), which restores the variance exactly in
# expectation (Evci et al. 2022, "Gradient flow in sparse neural networks").

# %%
static = ks.prune_at_init(make_mlp(), None, SPARSITY, scorer="random", distribution="erk")
print(f"sparsity before fit: {ks.report(static, print_fn=None).totals['sparsity']:.2f}")
probe = x_test[:256]
dense_std = keras.ops.convert_to_numpy(make_mlp().get_layer("hidden1")(probe)).std()
sparse_std = keras.ops.convert_to_numpy(static.get_layer("hidden1")(probe)).std()
print(f"hidden1 activation std at init: dense {dense_std:.3f}, sparse + rescale {sparse_std:.3f}")
train("static random", static, [])

# %% [markdown]
# Martens (2010) proposed a structured variant: every unit gets exactly `k` non-zero inputs. That is the
# `ks.patterns.FanIn(k)` pattern (with `k=None` each unit keeps `(1 - sparsity) * fan_in` inputs):

# %%
martens = ks.prune_at_init(make_mlp(), None, SPARSITY, scorer="random",
                           pattern=ks.patterns.FanIn(15), layers=["hidden1", "hidden2"])
mask = keras.ops.convert_to_numpy(martens.get_layer("hidden1").get_mask("kernel"))
print("inputs per hidden1 unit:", sorted(set(mask.sum(axis=0).tolist())))

# %% [markdown]
# ## 3. SNIP: prune at initialization from one batch
#
# `ks.prune_at_init(model, data, sparsity, scorer=...)` scores every weight before training and fixes the
# mask. SNIP (Lee et al. 2019) keeps the largest connection sensitivities `|g ⊙ w|`, with `g` the loss
# gradient on a batch. The returned layers have no schedule: no callback is needed.
#
# Also available: `scorer="grasp"` (keeps weights whose removal would reduce gradient flow least, from a
# Hessian-gradient product) and `scorer="synflow"`, which needs **no data** and iterates 100 rounds so
# that no layer is ever pruned away entirely.

# %%
snip = ks.prune_at_init(make_mlp(), (x_train[:256], y_train[:256]), SPARSITY, scorer="snip",
                        distribution="erk", loss=LOSS)
train("SNIP", snip)

synflow = ks.prune_at_init(make_mlp(), None, SPARSITY, scorer="synflow", distribution="erk",
                           rounds=20 if FAST else 100)
train("SynFlow", synflow)

# %% [markdown]
# ## 4. SET and RigL: move the connections during training
#
# Dynamic sparse training keeps every layer at its sparsity but *rewires* it. Every `update_freq` steps
# (ΔT) each layer drops the fraction `f(t)` of its active weights with the smallest magnitude and grows
# as many new ones:
#
# - **SET** (Mocanu et al. 2018) grows at random;
# - **RigL** (Evci et al. 2020) grows where the dense gradient `|∂L/∂w|` is largest, i.e. where a new
#   connection would reduce the loss fastest.
#
# `f(t) = α/2 · (1 + cos(π t / T_end))` decays to 0 at `end_step` (default: 75 % of the steps of the
# `fit`), after which the mask is fixed and training fine-tunes it. Both start from a random ERK mask
# (with the variance rescale above), keep the **number of active weights per layer constant** through
# every update, start regrown weights at **0** and reset their **Adam moments** (m and v) to 0.
#
# RigL needs the gradient of pruned weights too, which the normal backward pass does not give. The
# callback adds a *gradient probe* to each layer while it trains: a zero variable added to the effective
# kernel, that the optimizer overwrites with the dense gradient at every step. No custom train step is
# involved, and the probe is removed when `fit` ends (the saved model has no trace of it).

# %%
update_freq = 10 if FAST else 50
for name, algorithm in (("SET", ks.callbacks.SET), ("RigL", ks.callbacks.RigL)):
    model = ks.prune(make_mlp(), SPARSITY, distribution="erk")
    callback = algorithm(update_freq=update_freq, drop_fraction=0.3, seed=0)
    history = train(name, model, [callback])
    print(f"  drop fraction by epoch: {[round(f, 3) for f in history.history['drop_fraction']]}")
    print(f"  last update (dropped, grown) per layer: {callback.last_update}")

# %% [markdown]
# The logs carry `drop_fraction` (and `sparsity`) every epoch, so `CSVLogger` or TensorBoard show the
# schedule with no extra code. `last_update` shows that dropped and grown counts are equal in every layer.
#
# **Resuming.** The step is `optimizer.iterations`, SET's random choices are seeded by the step, and the
# update for step `t` runs right after step `t - 1`, so a run restored by `keras.callbacks.BackupAndRestore`
# continues with identical masks. Put the RigL/SET callback *before* `BackupAndRestore` in the list.

# %% [markdown]
# ## 5. Gradient criteria in gradual pruning
#
# The scorer is independent of the schedule: GMP can rank by something other than magnitude. With a
# gradient scorer the `Pruning` callback adds the same gradient probe:
#
# - `scorer="taylor"`: first-order Taylor importance `|g ⊙ w|`, summed over the steps between updates
#   (Molchanov et al. 2019);
# - `scorer="movement"`: movement pruning `−Σ g ⊙ w`, keeping weights that move away from zero (Sanh et
#   al. 2020), designed for fine-tuning pre-trained models.

# %%
taylor = ks.prune(make_mlp(), SPARSITY, schedule=schedule, distribution="erk", scorer="taylor")
train("GMP + Taylor", taylor, [ks.callbacks.Pruning()])

# %% [markdown]
# ## 6. Comparison

# %%
print(f"{'method':<16} {'accuracy':>9} {'sparsity':>9} {'train s':>8}")
for name, r in results.items():
    print(f"{name:<16} {r['accuracy']:>9.2%} {r['sparsity']:>9.1%} {r['seconds']:>8.1f}")

# %% [markdown]
# With the full number of epochs, the usual picture appears: the dynamic methods beat a fixed random
# mask, RigL's gradient-guided growth beats SET's random growth, and both come close to GMP, which had the
# advantage of training dense for half the run. The numbers vary by a point or so between seeds on a
# dataset this small; `benchmarks/sparse_training.py` runs every method at 90, 95 and 98 % over three
# seeds. (In fast mode the runs are too short to rank anything.)
#
# The sparsity column is over the masked weights (the kernels; biases are not pruned). Training time
# includes the callbacks: RigL's per-step cost is GMP's plus a gradient copy, and one drop-and-grow update
# of a million weights takes a few tens of milliseconds every ΔT steps.
#
# ## Summary
#
# ```python
# import keras_sparse as ks
#
# # sparse from scratch, rewired during training
# model = ks.prune(model, 0.9, distribution="erk")
# model.compile(...)
# model.fit(x, y, callbacks=[ks.callbacks.RigL(update_freq=100, drop_fraction=0.3)])  # or SET
#
# # fixed sparse mask from one batch (SNIP), from no data (SynFlow), or at random
# model = ks.prune_at_init(model, (x[:256], y[:256]), 0.9, scorer="snip", loss="...")
# model = ks.prune_at_init(model, None, 0.9, scorer="synflow", distribution="global")
# model = ks.prune_at_init(model, None, 0.9, scorer="random", distribution="erk")
#
# # gradual pruning with a gradient criterion
# model = ks.prune(model, 0.9, schedule=..., scorer="taylor")   # or "movement", "saliency"
# model.fit(x, y, callbacks=[ks.callbacks.Pruning()])
# ```
