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
# # Weight pruning inside `model.fit`
#
# This tutorial takes an ordinary Keras model to a sparse one, using nothing but `model.fit`:
#
# 1. train a plain Keras MLP on scikit-learn's handwritten digits (offline, 1,797 8×8 images);
# 2. make it sparse with **one call**, `ks.prune`, using a gradual (polynomial) sparsity schedule;
# 3. fine-tune it with `model.fit` and the `ks.callbacks.Pruning()` callback, and watch the sparsity in
#    the training logs;
# 4. compare its accuracy with the dense model and read `ks.report`: parameters, non-zeros, bytes, FLOPs;
# 5. try other sparsity **patterns** (`"2:4"`, `"channel"`) and **distributions** over layers
#    (`"global"`, `"erk"`), and prune a small CNN from scratch;
# 6. `ks.strip` the result into plain Keras layers, save it, load it with plain
#    `keras.saving.load_model`, and measure what actually got smaller.
#
# A word on names: this is *weight pruning* (sparsity): individual weights, or whole units, are set to
# exactly zero. It is unrelated to the "pruning callbacks" of hyper-parameter search tools (Optuna,
# KerasTuner), which stop unpromising *trials* early.
#
# Run the whole file with `python tutorials/01_pruning_in_fit.py` (about a minute on two CPU cores), or
# with `KERAS_SPARSE_FAST=1` for a quick smoke run (under a minute, lower accuracy). Any Keras backend
# works: set `KERAS_BACKEND=jax` to try JAX. Nothing is written outside a temporary directory.

# %%
import gzip
import math
import os
import tempfile

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_sparse as ks
from keras_sparse.demo import fast_mode

FAST = fast_mode()  # True when KERAS_SPARSE_FAST=1
EPOCHS_DENSE = 3 if FAST else 60  # training the dense baseline
EPOCHS_PRUNE = 2 if FAST else 30  # fine-tuning while pruning
EPOCHS_CNN = 2 if FAST else 30  # the CNN, trained from scratch
BATCH_SIZE = 32
WORKDIR = tempfile.TemporaryDirectory(prefix="keras_sparse_tutorial_")

print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, keras_sparse {ks.__version__}")
print("fast mode" if FAST else "full mode", "- files go to", WORKDIR.name)

# %% [markdown]
# ## The data
#
# `load_digits` ships with scikit-learn, so nothing is downloaded. Pixels go from 0..16 to 0..1, and a
# stratified 75/25 split keeps the ten classes balanced (1,347 training and 450 test images).

# %%
x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")
x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.25, stratify=y, random_state=0
)
steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
print(x_train.shape, x_test.shape, "steps per epoch:", steps_per_epoch)

# %% [markdown]
# ## 1. A plain Keras model
#
# Nothing here knows about keras_sparse: a 64-300-100-10 MLP, compiled and trained the usual way. This
# is the model we will make sparse. We name the layers so that we can refer to them later.


# %%
def make_mlp():
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(300, activation="relu", name="hidden1"),
            keras.layers.Dense(100, activation="relu", name="hidden2"),
            keras.layers.Dense(10, activation="softmax", name="classifier"),
        ],
        name="mlp",
    )


def compile_model(model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def accuracy(model):
    return model.evaluate(x_test, y_test, verbose=0)[1]


keras.utils.set_random_seed(0)
dense = compile_model(make_mlp())
dense.fit(x_train, y_train, epochs=EPOCHS_DENSE, batch_size=BATCH_SIZE, verbose=0)
dense_accuracy = accuracy(dense)
print(f"dense MLP: {dense.count_params():,} parameters, test accuracy {dense_accuracy:.2%}")

# %% [markdown]
# ## 2. Make it sparse: `ks.prune`
#
# `ks.prune(model, sparsity, schedule=...)` returns a **new** model (the dense one is left untouched)
# in which every supported layer (`Dense`, the convolutions, `Embedding`, `EinsumDense`, ...) is replaced
# by its sparse counterpart (`SparseDense`, ...) holding the same trained weights plus a boolean mask.
# Layers it cannot make sparse are skipped with one warning (or rejected with `strict=True`).
#
# The **schedule** says when the masks change and how sparse they are at each training step.
# `PolynomialDecay` is gradual magnitude pruning (Zhu & Gupta, 2017): sparsity rises from
# `initial_sparsity` to `final_sparsity` between `begin_step` and `end_step` along a cubic curve, fast
# at first and slowly at the end, with a mask update every `frequency` steps. The smallest-magnitude
# weights of each layer are removed at every update. We reach 90 % after 60 % of the fine-tuning steps
# and keep training the remaining weights for the rest.
#
# Steps are counted by the optimizer (`optimizer.iterations`), so they start at 0 with a freshly compiled
# model, and a run resumed from a checkpoint continues with the same masks.

# %%
TARGET = 0.9


def gradual_schedule(final_sparsity, epochs):
    total_steps = epochs * steps_per_epoch
    return ks.schedules.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=final_sparsity,
        begin_step=0,
        end_step=max(1, int(0.6 * total_steps)),
        frequency=max(1, steps_per_epoch // 4),
    )


pruned = ks.prune(dense, TARGET, schedule=gradual_schedule(TARGET, EPOCHS_PRUNE))
pruned.summary()

# Same weights, all masks still "keep everything": the outputs are those of the dense model.
gap = np.max(np.abs(pruned.predict(x_test, verbose=0) - dense.predict(x_test, verbose=0)))
print("largest output difference to the dense model before pruning:", gap)

# %% [markdown]
# The summary shows `SparseDense` layers. The extra *non-trainable* parameters are the masks; they are
# stored as booleans, one byte each, not as a second float copy of every kernel.
#
# ## 3. Fine-tune with the `Pruning` callback
#
# The pruned model is compiled and trained like any Keras model. The only addition is
# `ks.callbacks.Pruning()`, which runs each layer's schedule: before a training batch on an update step
# it recomputes the masks. It also writes the sparsity into `logs`, so it appears in the progress bar,
# in `history.history`, and in `CSVLogger` or `TensorBoard` files without extra code: `sparsity` over all
# masked weights, and `<layer>/sparsity` per layer at the end of each epoch.

# %%
compile_model(pruned)
history = pruned.fit(
    x_train,
    y_train,
    epochs=EPOCHS_PRUNE,
    batch_size=BATCH_SIZE,
    callbacks=[ks.callbacks.Pruning()],
    verbose=2,
)
print("sparsity at the end of each epoch:", [f"{s:.1%}" for s in history.history["sparsity"]])
print("per-layer keys in the history:", [k for k in history.history if k.endswith("/sparsity")])

# %% [markdown]
# Training accuracy drops while the schedule removes weights quickly, and recovers once the sparsity
# settles at 90 % and the remaining weights adapt. (If you forget the callback, the masks never change
# and the sparse layers warn you on the first training step.)
#
# ## 4. Accuracy and the report
#
# Now the question that matters: what did the 90 % sparsity cost in accuracy?

# %%
pruned_accuracy = accuracy(pruned)
print(f"dense      test accuracy {dense_accuracy:.2%}")
print(f"90% sparse test accuracy {pruned_accuracy:.2%}")

# %% [markdown]
# `ks.report(model)` prints one row per layer and returns the numbers (`.rows`, `.totals`,
# `.to_dict()` for JSON). It works on any built Keras model, sparse or not:
#
# - `params`, `nonzero`, `sparsity`: all weights, including biases (the `sparsity` of a row is over
#   its masked weights, the kernel; the total is over all parameters);
# - `dense B`: bytes of the weights as stored today, zeros included;
# - `compressed B`: an *estimate* of a compressed export, the kept values plus an index saying where they
#   are (a bitmap or coordinates for unstructured sparsity, 2 bits per value for 2:4, one bit per unit
#   for channel pruning);
# - `dense FLOPs` / `eff. FLOPs`: per example (a multiply-add counts 2), with every weight, and with the
#   non-zero weights only. The effective count is what a **sparse kernel** would need; the Keras `Dense`
#   layer still multiplies the zeros (see the last section).

# %%
dense_report = ks.report(dense)
print()
pruned_report = ks.report(pruned)
print()
print(
    f"non-zero weights {pruned_report.totals['nonzeros']:,} of {pruned_report.totals['params']:,}; "
    f"compressed estimate {pruned_report.totals['compressed_bytes']:,} B "
    f"vs {dense_report.totals['dense_bytes']:,} B dense"
)

# %% [markdown]
# ## 5. Patterns: which shape the kept weights form
#
# So far any individual weight could go (`pattern="unstructured"`, the default). That keeps the most
# accuracy per removed weight, but scattered zeros are hard to exploit. Two structured patterns:
#
# - `"2:4"`: in every group of 4 consecutive input weights of a unit, 2 are kept. This is the format of
#   NVIDIA's sparse tensor cores. Its sparsity is fixed at 50 %; the schedule only decides *when* the
#   pattern is applied (at its first update with a non-zero sparsity). Any `"N:M"` works.
# - `"channel"`: whole output units (neurons of a `Dense`, filters of a convolution) are removed, ranked
#   by the L1 norm of their weights. A model with removed units can be rebuilt physically smaller (we
#   do it at the end). Never channel-prune the output layer: its units are the classes. The `layers=`
#   argument (names, a regular expression, or a callable) selects which layers to prune.
#
# Every variant starts again from the trained dense model.


# %%
def prune_and_fine_tune(sparsity, **prune_kwargs):
    keras.utils.set_random_seed(1)
    model = ks.prune(
        dense, sparsity, schedule=gradual_schedule(sparsity, EPOCHS_PRUNE), **prune_kwargs
    )
    compile_model(model)
    model.fit(
        x_train,
        y_train,
        epochs=EPOCHS_PRUNE,
        batch_size=BATCH_SIZE,
        callbacks=[ks.callbacks.Pruning()],
        verbose=0,
    )
    return model


def summary_line(name, model):
    totals = ks.report(model, print_fn=None).totals
    return (
        f"{name:<28} acc {accuracy(model):7.2%}  sparsity {totals['sparsity']:6.1%}  "
        f"compressed {totals['compressed_bytes']:>8,} B  eff. FLOPs {totals['effective_flops']:>8,}"
    )


two_four = prune_and_fine_tune(0.5, pattern="2:4")
channel = prune_and_fine_tune(0.5, pattern="channel", layers=["hidden1", "hidden2"])

print(summary_line("dense", dense))
print(summary_line("unstructured 90%", pruned))
print(summary_line("2:4 (50%)", two_four))
print(summary_line("channel 50% (hidden layers)", channel))
print()
ks.report(channel)

# %% [markdown]
# In the channel-pruned model, half of the units of `hidden1` and `hidden2` have an all-zero kernel
# column. The `classifier` was left dense, as intended. Note the compressed estimate: one bit per unit
# is enough to say which units are kept.
#
# ## 6. Distributions: how much sparsity each layer gets
#
# With the default `distribution="uniform"` every layer ends at the target. Two alternatives:
#
# - `"global"`: one magnitude threshold across all layers, so the layers with many small weights give up
#   more of them (global magnitude pruning; unstructured pattern only);
# - `"erk"`: Erdős–Rényi-Kernel (Evci et al., 2020): a layer's density is proportional to
#   `sum(shape) / prod(shape)`, so large layers are pruned harder and small ones (here the classifier)
#   are spared. The model-level target is kept.
#
# A dict `{layer name: sparsity}` sets each layer by hand.

# %%
global_model = prune_and_fine_tune(TARGET, distribution="global")
erk_model = prune_and_fine_tune(TARGET, distribution="erk")

layer_names = [layer.name for layer in dense.layers]
print(f"{'distribution':<14}" + "".join(f"{n:>12}" for n in layer_names) + f"{'test acc':>10}")
for name, model in (("uniform", pruned), ("global", global_model), ("erk", erk_model)):
    per_layer = {layer.name: layer.sparsity for layer in model.layers}
    print(
        f"{name:<14}"
        + "".join(f"{per_layer[n]:>12.1%}" for n in layer_names)
        + f"{accuracy(model):>10.2%}"
    )

# %% [markdown]
# The uniform distribution also prunes the small classifier (1,010 weights, the last decision) to 90 %;
# `"global"` and `"erk"` leave it denser and prune the large `hidden2` harder, at the same overall
# budget. On a model this small the accuracies differ by a few of the 450 test images (one image is
# 0.22 %), which is within the spread between random seeds: compare distributions over several seeds
# before drawing conclusions.
#
# ## 7. A small CNN, pruned from scratch
#
# `ks.prune` works the same on convolutions, and it does not need a trained model: here a fresh CNN is
# made sparse before its first step and trained with gradual pruning from the start. For convolutions
# the report's FLOPs column shows why they matter: each kernel weight is used at every position of the
# image.

# %%
def make_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax", name="classifier"),
        ],
        name="cnn",
    )


images_train, images_test = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
keras.utils.set_random_seed(0)
cnn = ks.prune(make_cnn(), 0.75, schedule=gradual_schedule(0.75, EPOCHS_CNN))
compile_model(cnn)
cnn_history = cnn.fit(
    images_train,
    y_train,
    epochs=EPOCHS_CNN,
    batch_size=BATCH_SIZE,
    callbacks=[ks.callbacks.Pruning()],
    verbose=0,
)
print("CNN sparsity after each epoch:", [f"{s:.0%}" for s in cnn_history.history["sparsity"]])
print(f"75% sparse CNN test accuracy {cnn.evaluate(images_test, y_test, verbose=0)[1]:.2%}")
ks.report(cnn)

# %% [markdown]
# ## 8. Strip, save, load
#
# The sparse layers are needed only while training. `ks.strip(model)` returns plain Keras layers holding
# the effective weights (the pruned entries are exact zeros, the masks are gone). The result is an
# ordinary Keras model: save it and load it with plain `keras.saving.load_model`, with no keras_sparse
# import and no custom objects, on any backend, or hand it to any Keras tool.
#
# (The sparse model itself also saves to `.keras` and reloads, masks included, for resuming training;
# loading it needs `import keras_sparse`.)
#
# One detail before saving: a `.keras` file of a *compiled* model also stores the optimizer's state
# (Adam keeps two extra numbers per weight) so that training can resume. A model you ship does not need
# it, so we save uncompiled copies, of the dense model as well, to compare like with like.


# %%
def inference_copy(model):
    """An uncompiled copy of a Sequential or functional model with the same weights."""
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


stripped = ks.strip(pruned)
print("stripped layers:", [type(layer).__name__ for layer in stripped.layers])

dense_path = os.path.join(WORKDIR.name, "dense.keras")
stripped_path = os.path.join(WORKDIR.name, "pruned_stripped.keras")
inference_copy(dense).save(dense_path)
inference_copy(stripped).save(stripped_path)

reloaded = keras.saving.load_model(stripped_path)
print("reloaded layers:", [type(layer).__name__ for layer in reloaded.layers])
gap = np.max(np.abs(reloaded.predict(x_test, verbose=0) - pruned.predict(x_test, verbose=0)))
print("largest output difference, reloaded vs sparse model:", gap)
kernel = keras.ops.convert_to_numpy(reloaded.get_layer("hidden1").kernel)
print(f"zeros in the reloaded hidden1 kernel: {np.mean(kernel == 0):.1%}")

# %% [markdown]
# ## 9. What actually got smaller?
#
# Let us measure instead of assuming. The `.keras` file is a zip archive; compressing it with gzip shows
# what the zeros are worth on disk or over the network.


# %%
def file_sizes(path):
    with open(path, "rb") as f:
        data = f.read()
    return len(data), len(gzip.compress(data, compresslevel=9))


for name, path in (("dense", dense_path), ("90% sparse, stripped", stripped_path)):
    raw, packed = file_sizes(path)
    print(f"{name:<22} .keras {raw:>9,} B   gzip -9 {packed:>9,} B")
print(f"parameters: dense {dense.count_params():,}, stripped sparse {stripped.count_params():,}")

# %% [markdown]
# The stripped model has **exactly as many parameters** as the dense one and an `.keras` file of the
# same size: a `Dense` layer stores its zeros like any other number, and at run time it multiplies
# them too. Only the gzip column shrinks, because runs of zeros compress well.
#
# This is the honest summary of where sparsity pays off:
#
# - **A mask alone makes nothing faster or smaller in memory.** Training with masks costs a little
#   *more* than dense training, and a stripped model runs at dense speed.
# - **Compressed export** is real: the gzip'd file above, or the sparse index + values that `ks.report`
#   estimates in its `compressed B` column.
# - **Structured sparsity shrunk into a smaller model** is real: fewer units means smaller matrices,
#   fewer FLOPs and faster inference in plain Keras, on every backend. See below.
# - **LiteRT (TFLite) conversion** with int8 weights and sparse tensors is real on mobile and edge
#   devices (TensorFlow backend; a later tutorial).
#
# `ks.report` shows the dense and effective columns side by side so you can see which of these a model
# can get. The unstructured 90 % model's "effective FLOPs" need a sparse kernel to be realised; the
# channel-pruned model's can be had today.
#
# ### Shrinking the channel-pruned model by hand
#
# Removing a unit is exact if we account for its bias: a unit whose kernel column is all zeros outputs
# the constant `relu(bias)`, which the next layer receives through its kernel row. Folding that constant
# into the next layer's bias, then deleting the unit's column (and the next layer's row) gives a
# smaller plain model with the same outputs.


# %%
def shrink_mlp(model):
    """Physically remove the all-zero units of a stripped Sequential MLP whose hidden
    layers use ReLU, folding each removed unit's constant output into the next bias."""
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers]
    biases = [keras.ops.convert_to_numpy(layer.bias) for layer in model.layers]
    for i in range(len(kernels) - 1):
        kept = np.any(kernels[i] != 0, axis=0)
        biases[i + 1] = biases[i + 1] + np.maximum(biases[i][~kept], 0.0) @ kernels[i + 1][~kept]
        kernels[i], biases[i] = kernels[i][:, kept], biases[i][kept]
        kernels[i + 1] = kernels[i + 1][kept]
    small = keras.Sequential(
        [keras.Input((kernels[0].shape[0],))]
        + [
            keras.layers.Dense(k.shape[1], activation=layer.activation, name=layer.name)
            for k, layer in zip(kernels, model.layers)
        ],
        name="mlp_shrunk",
    )
    for layer, kernel, bias in zip(small.layers, kernels, biases):
        layer.set_weights([kernel, bias])
    return small


small = compile_model(shrink_mlp(ks.strip(channel)))
gap = np.max(np.abs(small.predict(x_test, verbose=0) - channel.predict(x_test, verbose=0)))
print("layer widths:", [layer.units for layer in small.layers], "- output difference:", gap)
print(summary_line("dense", dense))
print(summary_line("channel 50%, shrunk", small))
small_path = os.path.join(WORKDIR.name, "channel_shrunk.keras")
inference_copy(small).save(small_path)
raw, packed = file_sizes(small_path)
print(f"shrunk .keras {raw:,} B, gzip -9 {packed:,} B; parameters {small.count_params():,}")

# %% [markdown]
# The shrunk model is an ordinary, smaller `Dense` network: its dense FLOPs *are* its effective FLOPs,
# and it is faster on every backend without any special kernel. It is even smaller than the report of
# the channel-pruned model suggested: removing a unit also removes the next layer's kernel row that
# reads it, which a per-layer count cannot see.
#
# ## Summary
#
# ```python
# import keras_sparse as ks
#
# model = ks.prune(model, 0.9, schedule=ks.schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=2000))
# model.compile(...)
# model.fit(x, y, callbacks=[ks.callbacks.Pruning()])   # sparsity shows up in the logs
# ks.report(model)                                       # params, non-zeros, bytes, FLOPs
# plain = ks.strip(model)                                # plain Keras layers, exact zeros
# plain.save("model.keras")                              # loads with keras.saving.load_model
# ```
#
# Knobs: `pattern=` (`"unstructured"`, `"2:4"`, `"channel"`, `ks.patterns.Block((4, 4))`),
# `distribution=` (`"uniform"`, `"global"`, `"erk"`, a dict of per-layer sparsities), `layers=` (which
# layers), `schedule=` (`PolynomialDecay`, `ConstantSparsity`, `OneShot`).

# %%
WORKDIR.cleanup()
