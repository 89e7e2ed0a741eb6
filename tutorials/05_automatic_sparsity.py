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
# # Automatic sparsity: no hand-set coefficient, threshold or per-layer budget
#
# The earlier tutorials chose every number by hand: the sparsity of each layer, the penalty coefficient of
# group lasso, the threshold that turns small groups into masks. This one starts from a trained model and
# lets the library choose them:
#
# | question | tool |
# |---|---|
# | how much can each layer lose? | `ks.sensitivity` measures it, `ks.allocate` turns it into per-layer sparsities for a global budget |
# | which penalty coefficient λ? | `ks.optimizers.Proximal` + `ks.callbacks.SparsityController` steer λ to a target sparsity |
# | which threshold? | learned: hard-concrete L0 gates (`ks.gate(model, "l0", 0.9)`) with a Lagrangian that holds the target |
# | how far can the model go within 1 point of accuracy? | `ks.auto_compress` searches it with short fine-tunes |
#
# Run it with `python tutorials/05_automatic_sparsity.py` (a few minutes on two CPU cores) or with
# `KERAS_SPARSE_FAST=1` for a smoke run (under two minutes, lower accuracy). Any Keras backend works.

# %%
import math

import keras
import numpy as np

import keras_sparse as ks
from keras_sparse.demo import fast_mode
from keras_sparse.demo import load_digits_split

FAST = fast_mode()  # True when KERAS_SPARSE_FAST=1
EPOCHS = 4 if FAST else 30          # training of the dense model
FINE_TUNE = 2 if FAST else 10       # each compression's fine-tune
BATCH_SIZE = 32
TARGET = 0.9

print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, keras_sparse {ks.__version__}")

# %% [markdown]
# ## A trained dense model
#
# scikit-learn's digits, the 75/25 split of the other tutorials; 20 % of the training part is held out as
# the validation set every choice below is made on (the test set is only reported).

# %%
x_train, x_test, y_train, y_test = load_digits_split(seed=0)
cut = int(0.8 * len(x_train))
x_fit, y_fit, x_val, y_val = x_train[:cut], y_train[:cut], x_train[cut:], y_train[cut:]
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

keras.utils.set_random_seed(0)
dense = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(300, activation="relu", name="hidden1"),
    keras.layers.Dense(100, activation="relu", name="hidden2"),
    keras.layers.Dense(10, name="logits"),
])
dense.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
dense.fit(x_fit, y_fit, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0)
dense_val = dense.evaluate(x_val, y_val, verbose=0)[1]
dense_test = dense.evaluate(x_test, y_test, verbose=0)[1]
print(f"dense: validation accuracy {dense_val:.4f}, test accuracy {dense_test:.4f}")


def copy_of(model):
    """A fresh copy with the same weights (every method below starts from the trained model)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


results = {}

# %% [markdown]
# ## 1. Per-layer budgets from a sensitivity scan
#
# `ks.sensitivity` prunes one layer at a time to each level (by magnitude), evaluates the model on the
# validation data and restores the layer bit for bit: no training. `ks.allocate` then picks the per-layer
# sparsities that remove 90 % of the prunable parameters while minimising the predicted loss of
# accuracy. The dict goes straight into `ks.prune`.

# %%
table = ks.sensitivity(dense, (x_val, y_val), sparsities=(0.5, 0.8, 0.9, 0.95, 0.98), verbose=0)
for row in table.rows:
    print(f"  {row['layer']:8s} at {row['sparsity']:.0%}: accuracy {row['metric']:.4f}")
per_layer = ks.allocate(dense, TARGET, by="params", sensitivity=table)
print("allocation:", {name: round(s, 3) for name, s in per_layer.items()})

steps = math.ceil(len(x_fit) / BATCH_SIZE) * FINE_TUNE
schedule = ks.schedules.PolynomialDecay(0.0, TARGET, 0, steps // 2, frequency=10)
allocated = ks.prune(copy_of(dense), None, distribution=per_layer, schedule=schedule)
allocated.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
allocated.fit(x_fit, y_fit, epochs=FINE_TUNE, batch_size=BATCH_SIZE, verbose=0,
              callbacks=[ks.callbacks.Pruning()])
results["allocate + GMP"] = allocated

# %% [markdown]
# ## 2. A penalty with no coefficient to tune
#
# L1 makes weights exactly zero only through its *proximal* step (soft thresholding after the optimizer's
# step); `ks.optimizers.Proximal` adds it to any Keras optimizer, scaled for Adam by Adam's own second
# moments. `SparsityController(0.9)` measures the exact zeros as training goes and moves λ (a variable of
# the optimizer, so the compiled step sees each change) along a cubic ramp to 90 %; at the end of the ramp
# it makes the count exact, holds the zero pattern and sets λ to 0 for the rest of the run (a fine-tune).
# λ and the measured sparsity are in the logs.

# %%
penalized = copy_of(dense)
penalized.compile(
    ks.optimizers.Proximal(keras.optimizers.Adam(1e-3), "l1",
                           variables=ks.optimizers.kernels(penalized, exclude="logits")),
    LOSS, metrics=["accuracy"])
controller = ks.callbacks.SparsityController(TARGET)
history = penalized.fit(x_fit, y_fit, epochs=FINE_TUNE, batch_size=BATCH_SIZE, verbose=0,
                        callbacks=[controller])
for record in controller.trajectory[:: max(1, len(controller.trajectory) // 6)]:
    print(f"  step {record['step']:4d}: lambda {record['lambda']:.2e}, sparsity {record['sparsity']:.3f}"
          f" (target {record['target']:.3f})")
print(f"final sparsity of the penalized kernels: {penalized.optimizer.sparsity():.4f}")
results["L1 + controller"] = penalized

# %% [markdown]
# ## 3. Learned thresholds: L0 gates
#
# A hard-concrete gate per weight (Louizos et al. 2018) is trained with the weights; a Lagrangian whose
# multipliers rise while the expected sparsity is off target (Wang et al. 2020) holds it at 90 %. The
# gates need a larger learning rate than the weights usually get, and time to settle after the target
# is reached: here twice the other methods' epochs, the target reached halfway.

# %%
gate_epochs = 2 * FINE_TUNE
gate = ks.gates.HardConcrete(TARGET, warmup_steps=steps)   # the target is reached halfway
gated = ks.gate(copy_of(dense), gate, layers=["hidden1", "hidden2"])
gated.compile(keras.optimizers.Adam(2e-2), LOSS, metrics=["accuracy"])
gated.fit(x_fit, y_fit, epochs=gate_epochs, batch_size=BATCH_SIZE, verbose=0)
results["L0 gates"] = gated

# %% [markdown]
# ## 4. Sparse activations, steered the same way
#
# Sparsity of *activations* is the review's other inductive bias: most hidden outputs are zero for each
# example, so a layer reading them could skip most of its multiply-adds. `ks.layers.ActivitySparsity` after
# a ReLU adds `λ·mean|a|` to the loss; the same controller steers each layer's λ (a variable of the layer)
# to 90 % zeros. `ks.report(model, data=x)` measures the zeros on data and the FLOPs the next layer could
# skip. (`ks.layers.TopKActivation(fraction=0.1)` is the hard alternative: exactly 10 % kept per example.)

# %%
keras.utils.set_random_seed(0)
active = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(300, activation="relu", name="hidden1"), ks.layers.ActivitySparsity(name="zeros1"),
    keras.layers.Dense(100, activation="relu", name="hidden2"), ks.layers.ActivitySparsity(name="zeros2"),
    keras.layers.Dense(10, name="logits"),
])
active.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
active.fit(x_fit, y_fit, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0,
           callbacks=[ks.callbacks.SparsityController(TARGET)])
print(ks.report(active, data=x_val))
print(f"validation accuracy with sparse activations: {active.evaluate(x_val, y_val, verbose=0)[1]:.4f}")

# %% [markdown]
# ## 5. The smallest model within 1 point of accuracy
#
# `ks.auto_compress` answers the question the sections above leave to you: how far can this model go? It
# measures the dense model's validation accuracy and one sensitivity table, then bisects the sparsity level
# (0.9, 0.99, 0.999 are equal steps): each trial prunes a copy to the level with the `ks.allocate` split,
# fine-tunes it briefly and evaluates it. Trials are KerasTuner trials, so a killed search resumes from its
# `directory` and a cluster can run them in parallel. The user's model is never modified.

# %%
import tempfile  # noqa: E402

with tempfile.TemporaryDirectory(prefix="ks_auto_compress_") as search_dir:
    # Run the same call again with this directory and finished trials are read back, not re-run.
    result = ks.auto_compress(dense, (x_fit, y_fit), validation_data=(x_val, y_val),
                              max_accuracy_drop=0.01, fine_tune_epochs=1 if FAST else 2,
                              directory=search_dir, seed=0)
print(result.trials)
print(f"chosen: sparsity {result.best['sparsity']:.3f}, validation accuracy {result.best['val_metric']:.4f}")
results["auto_compress"] = result.model

# %% [markdown]
# ## Comparison
#
# Sparsity is counted on the stripped model (plain Keras layers): the exact zeros of the two hidden
# kernels.

# %%


def hidden_sparsity(model):
    plain = model if not any(ks.layers.is_sparse_layer(layer) for layer in model.layers) else ks.strip(model)
    kernels = [keras.ops.convert_to_numpy(plain.get_layer(name).kernel) for name in ("hidden1", "hidden2")]
    return sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)


print(f"{'method':18s} {'sparsity':>9s} {'val acc':>8s} {'test acc':>9s}")
print(f"{'dense':18s} {0.0:9.3f} {dense_val:8.4f} {dense_test:9.4f}")
for name, model in results.items():
    val = model.evaluate(x_val, y_val, verbose=0)[1]
    test = model.evaluate(x_test, y_test, verbose=0)[1]
    print(f"{name:18s} {hidden_sparsity(model):9.3f} {val:8.4f} {test:9.4f}")
assert abs(hidden_sparsity(results["L1 + controller"]) - TARGET) < 0.005
