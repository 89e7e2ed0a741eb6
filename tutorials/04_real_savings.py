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
# # Savings you can measure: shrink, column sampling, low-rank factors
#
# A pruning mask makes nothing faster: a `Dense` layer with 90 % zeros still multiplies all of them.
# This tutorial uses the three techniques that give a **physically smaller model in plain Keras**, with
# fewer parameters, fewer FLOPs and a lower latency on any backend, and measures each:
#
# 1. **Structured pruning + `ks.shrink`**: remove whole units, filters and attention heads, then rebuild
#    the model without them. The result is an ordinary Keras model that saves and loads as a plain
#    `.keras` file, with the same outputs as the pruned model.
# 2. **Column sampling** (`ks.sample_columns`): keep a subset of the *input features* of each `Dense`
#    layer (chosen by leverage score, CUR-style), refit the kept weights by least squares, and let
#    `ks.shrink` remove whatever produced the dropped features, model inputs included.
# 3. **Low-rank factorization** (`ks.factorize`): replace a trained kernel by two thin factors (truncated
#    SVD), only where that lowers parameters and FLOPs, with the rank chosen by retained energy.
#
# Everything runs on scikit-learn's digits (offline). Run the file with
# `python tutorials/04_real_savings.py` (a few minutes on two CPU cores) or with `KERAS_SPARSE_FAST=1`
# for a quick smoke run (under a minute, lower accuracy). Any backend works (`KERAS_BACKEND=jax`).

# %%
import os
import statistics
import tempfile
import time

import keras
import numpy as np

import keras_sparse as ks
from keras_sparse.demo import fast_mode
from keras_sparse.demo import load_digits_split

FAST = fast_mode()
EPOCHS = 4 if FAST else 40  # training the dense models
TUNE = 2 if FAST else 15  # fine-tuning after each change
TUNE_LR = 3e-4  # a smaller step than for training: the weights start close to good ones
BATCH_SIZE = 32
WORKDIR = tempfile.TemporaryDirectory(prefix="keras_sparse_tutorial_")
print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, keras_sparse {ks.__version__}")
print("fast mode" if FAST else "full mode")

x_train, x_test, y_train, y_test = load_digits_split(seed=0)
images_train, images_test = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
print("train", x_train.shape, "test", x_test.shape)


# %%
def compile_model(model, learning_rate=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def fit(model, x, epochs, learning_rate=1e-3):
    keras.utils.set_random_seed(0)
    compile_model(model, learning_rate)
    model.fit(x, y_train, epochs=epochs, batch_size=BATCH_SIZE, verbose=0)
    return model


def accuracy(model, x):
    logits = model.predict(x, verbose=0, batch_size=256)
    return float(np.mean(np.argmax(logits, axis=-1) == y_test))


def cost(model):
    totals = ks.report(model, print_fn=None).totals
    return totals["params"], totals["effective_flops"]


def line(name, model, x):
    params, flops = cost(model)
    return f"{name:<34} params {params:>8,}   FLOPs/example {flops:>10,}   test acc {accuracy(model, x):.2%}"


# %% [markdown]
# ## 1. Channel pruning, then `ks.shrink`
#
# A small CNN on the 8×8 digit images. Its two convolutions and its hidden `Dense` layer are what we
# will make narrower; the classifier keeps its 10 units (they are the classes).

# %%
def make_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="classifier"),
        ],
        name="cnn",
    )


keras.utils.set_random_seed(0)
cnn = fit(make_cnn(), images_train, EPOCHS)
print(line("dense CNN", cnn, images_test))

# %% [markdown]
# `ks.prune_channels` removes whole units at once with a *group* criterion. Here `"l2_norm"`: the units
# (filters) with the smallest L2 norm go, half of each selected layer. Other criteria: `"l1_norm"`
# (Li et al., 2017), `"bn_gamma"` (the |γ| of the BatchNormalization after the layer: network
# slimming; `prune_channels` finds the BatchNorm in the graph), `"taylor_channel"` (|g·w| summed per
# unit, on a batch you pass as `data=(x, y)`).
#
# The masks are fixed (no schedule), so the model is fine-tuned with a plain `fit`. For *gradual*
# channel pruning during training, use `ks.prune(model, 0.5, pattern="channel", scorer="l2_norm",
# schedule=...)` with the `ks.callbacks.Pruning()` callback, as in tutorial 01: the result shrinks the
# same way.

# %%
pruned = ks.prune_channels(cnn, 0.5, scorer="l2_norm", layers=["conv1", "conv2", "hidden"])
print(line("pruned, before fine-tuning", pruned, images_test))
fit(pruned, images_train, TUNE, TUNE_LR)
print(line("pruned + fine-tuned (masked)", pruned, images_test))

# %% [markdown]
# The masked model still has every weight: its parameter and FLOP counts above are the dense ones.
# `ks.shrink` rebuilds it without the removed units. It follows the graph: a removed filter of `conv1`
# is a removed input channel of `conv2`; a removed filter of `conv2` is 16 features of the `Flatten`
# output (its 4×4 positions after pooling), hence 16 rows of `hidden`'s kernel; a removed unit of
# `hidden` is a row of the classifier's kernel.
#
# **Exactness.** A removed unit is not silent: its kernel column is zero, so it outputs `relu(bias)`, a
# constant. `shrink` folds that constant into the next layer's bias (exact for `Dense`, `valid`
# convolutions and `1×1` convolutions). In front of a `same`-padded convolution the zero padding makes
# a constant image non-constant at the borders, so there one constant channel is kept as a *carrier*
# and the others are folded into its kernel slice, exactly. The function checks the new model against
# the old one on random inputs and refuses to return a model whose outputs differ.

# %%
small, info = ks.shrink(pruned, return_info=True)
print(info)
gap = np.max(np.abs(small.predict(images_test, verbose=0) - pruned.predict(images_test, verbose=0)))
print(f"\nlargest output difference to the masked model: {gap:.2e}")
print(line("dense CNN", cnn, images_test))
print(line("shrunk CNN", small, images_test))

# %% [markdown]
# The shrunk model is plain Keras (`Conv2D`, `Dense`, ...), so it saves and loads with
# `keras.saving.load_model` and no `keras_sparse` import, and a `.keras` file of it is smaller.

# %%
def saved_size(model, name):
    path = os.path.join(WORKDIR.name, name + ".keras")
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.save(path)
    return path, os.path.getsize(path)


dense_path, dense_bytes = saved_size(cnn, "cnn")
small_path, small_bytes = saved_size(small, "cnn_shrunk")
reloaded = keras.saving.load_model(small_path)
print("reloaded layers:", [type(layer).__name__ for layer in reloaded.layers])
print(f".keras file: dense {dense_bytes:,} B, shrunk {small_bytes:,} B")

# %% [markdown]
# ### What `shrink` follows
#
# Sequential and functional models (nested ones are inlined): `Dense`, `Conv1D/2D/3D`, `DepthwiseConv`,
# `SeparableConv`, `BatchNormalization`, activations, `Dropout`, pooling and global pooling,
# `Flatten`/`Reshape`, padding/cropping/up-sampling, residual `Add` (a channel stays when any input
# needs it), `Concatenate` (index offsets), other merges, `Embedding`, `MultiHeadAttention` (heads) and
# this package's low-rank and column-sampled layers. A layer it cannot follow (say `LayerNormalization`,
# which mixes channels) is kept whole; `info.blocked` lists pruned units kept because of one, and
# `strict=True` turns that into an error.
#
# A residual branch whose layers are all pruned becomes the identity: here the second block's
# convolution loses every filter. Its constant output (after its BatchNorm) is added back by a
# `Rescaling` layer, since the other input of the `Add` is a ReLU output that cannot take a bias.

# %%
inputs = keras.Input((8, 8, 1))
x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
branch = keras.layers.Conv2D(16, 3, padding="same", name="block_conv")(x)
branch = keras.layers.BatchNormalization(name="block_bn")(branch)
x = keras.layers.ReLU(name="block_relu")(keras.layers.Add(name="block_add")([x, branch]))
x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
resnet = keras.Model(inputs, keras.layers.Dense(10, name="classifier")(x), name="tiny_resnet")
resnet = fit(resnet, images_train, EPOCHS)

no_branch = ks.prune_channels(resnet, 0.0, layers=["block_conv"])
no_branch.get_layer("block_conv").set_mask("kernel", np.zeros((3, 3, 16, 16), dtype=bool))
shrunk_resnet, resnet_info = ks.shrink(no_branch, return_info=True)
print([layer.name for layer in shrunk_resnet.layers])
print("added back:", resnet_info.offset_layers, "- parameters", resnet_info.params_before, "->",
      resnet_info.params_after)

# %% [markdown]
# ### Attention heads
#
# In a `MultiHeadAttention` layer the unit of structure is the head. `ks.prune_heads` swaps the layer
# for `ks.layers.HeadMaskedMultiHeadAttention` (the Keras layer plus a head mask: a masked head adds
# exactly zero, in training too), choosing the heads by the norm of their weights or by hand;
# `ks.shrink` then rebuilds a plain `MultiHeadAttention` with fewer heads. Here on the digits read as
# 8 rows of 8 pixels.

# %%
rows_train, rows_test = x_train.reshape(-1, 8, 8), x_test.reshape(-1, 8, 8)
inputs = keras.Input((8, 8))
h = keras.layers.Dense(32, name="embed")(inputs)
attention = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, name="attention")(h, h)
h = keras.layers.LayerNormalization(name="norm")(keras.layers.Add(name="residual")([h, attention]))
h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
transformer = keras.Model(inputs, keras.layers.Dense(10, name="classifier")(h), name="transformer")
transformer = fit(transformer, rows_train, EPOCHS)
two_heads = fit(ks.prune_heads(transformer, 0.5), rows_train, TUNE, TUNE_LR)
shrunk_transformer = ks.shrink(two_heads)
print("heads:", shrunk_transformer.get_layer("attention").num_heads)
print(line("transformer", transformer, rows_test))
print(line("2 of 4 heads, shrunk", shrunk_transformer, rows_test))

# %% [markdown]
# ## 2. Column sampling
#
# A Keras `Dense` kernel is `(inputs, units)`, so an input feature is a **row** of it (a column of the
# PyTorch weight, hence the name). `ks.sample_columns(model, keep, method, data)` replaces each
# selected `Dense` layer by a `ks.layers.ColumnSampledDense` that stores only the kept rows and gathers
# its inputs. `method="leverage"` keeps the features with the largest leverage scores of the kernel's
# truncated SVD (CUR-style column subset selection); `"norm"` and `"random"` are the baselines. With
# `data`, the kept weights and the bias are refitted by least squares so that the layer's output on
# that data changes as little as possible.
#
# We keep half of the input features of every layer of the digits MLP 64-300-100-10.

# %%
def make_mlp():
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(300, activation="relu", name="hidden1"),
            keras.layers.Dense(100, activation="relu", name="hidden2"),
            keras.layers.Dense(10, name="classifier"),
        ],
        name="mlp",
    )


keras.utils.set_random_seed(0)
mlp = fit(make_mlp(), x_train, EPOCHS)
sampled, sample_info = ks.sample_columns(mlp, 0.5, "leverage", data=x_train, return_info=True)
for name, row in sample_info.items():
    print(f"{name:<11} keeps {len(row['kept']):>3} of {row['in_features']:>3} inputs; relative output "
          f"error {row['error_before_refit']:.3f} without refit, {row['error_after_refit']:.3f} with it")
print(line("column-sampled, refitted", sampled, x_test))
fit(sampled, x_train, TUNE, TUNE_LR)
print(line("column-sampled + fine-tuned", sampled, x_test))

# %% [markdown]
# `hidden2` now reads only 150 of `hidden1`'s 300 units, and the classifier 50 of `hidden2`'s 100: the
# others are computed for nothing. `ks.shrink` removes them, and also the **model input features** that
# `hidden1` no longer reads: the new model takes only the kept pixels (it warns about that, or reports
# it in `info.dropped_inputs` / `info.kept_inputs`; pass `drop_inputs=False` to keep the input shape).

# %%
small_mlp, mlp_info = ks.shrink(sampled, return_info=True)
kept_pixels = next(iter(mlp_info.kept_inputs.values()))
print([f"{layer.name}: {layer.units}" for layer in small_mlp.layers[1:]])
grid = np.full(64, ".")
grid[kept_pixels] = "#"
print("pixels the model still reads (#):")
print("\n".join(" ".join(grid[r * 8:(r + 1) * 8]) for r in range(8)))
print(line("dense MLP", mlp, x_test))
print(line("column-sampled, shrunk", small_mlp, x_test[:, kept_pixels]))

# %% [markdown]
# ## 3. Low-rank factors
#
# `ks.factorize` replaces a trained kernel `W` by `A @ B` from its truncated SVD (the best rank-`r`
# approximation, Eckart–Young), as `ks.layers.LowRankDense` / `ks.layers.LowRankConv2D` (a `k×k`
# convolution with `r` filters followed by a `1×1` convolution). The rank keeps a fraction `energy` of
# the squared singular values, and a layer is converted only if `r·(in + out) < in·out`, so parameters
# and FLOPs both fall. Both layers also train from scratch and accept a `kernel_quantizer`.

# %%
factored, factor_info = ks.factorize(mlp, energy=0.9, return_info=True)
for name, row in factor_info.items():
    print(f"{name:<11} rank {row['rank']:>3} of {min(row['fan_in'], row['out']):>3}: "
          f"{row['params_before']:>6,} -> {row['params_after']:>6,} weights, {row['status']}")
print(line("factorized (energy 0.9)", factored, x_test))
fit(factored, x_train, TUNE, TUNE_LR)
print(line("factorized + fine-tuned", factored, x_test))
ks.report(factored)

# %% [markdown]
# ## 4. Measured latency
#
# FLOPs are a promise; latency is what you get. We time Keras inference (`predict_on_batch`, compiled)
# at batch 1 and 128, alternating between the models so that machine noise hits all of them alike, and
# take medians. The speed-up is compared with the FLOP ratio.
#
# Expect the small digits models to fall short of their FLOP ratio: at this size a call is dominated by
# fixed costs (dispatch, memory traffic of activations) that do not shrink with the kernels. The last
# model is a wider CNN (random weights; only its speed matters), where the convolutions dominate.

# %%
def median_latency(model, x, calls):
    model.predict_on_batch(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(models, example_shape, rounds=3 if FAST else 7, calls=5 if FAST else 20):
    rng = np.random.default_rng(0)
    batches = {b: rng.standard_normal((b,) + example_shape).astype("float32") for b in (1, 128)}
    timings = {name: {1: [], 128: []} for name in models}
    for r in range(rounds):
        names = list(models)
        for name in names[r % len(names):] + names[: r % len(names)]:
            model, select = models[name]
            for batch, x in batches.items():
                timings[name][batch].append(median_latency(model, select(x), calls))
    base = {b: statistics.median(timings["dense"][b]) for b in (1, 128)}
    dense_flops = cost(models["dense"][0])[1]
    print(f"{'model':<22}{'FLOP ratio':>11}{'batch 1 ms':>12}{'speed-up':>10}{'batch 128 ms':>14}{'speed-up':>10}")
    for name, (model, _) in models.items():
        t = {b: statistics.median(timings[name][b]) for b in (1, 128)}
        ratio = dense_flops / cost(model)[1]
        print(f"{name:<22}{ratio:>10.2f}x{1e3 * t[1]:>12.3f}{base[1] / t[1]:>9.2f}x"
              f"{1e3 * t[128]:>14.2f}{base[128] / t[128]:>9.2f}x")


same = lambda x: x  # noqa: E731
print("digits MLP")
compare({"dense": (mlp, same), "columns 50%, shrunk": (small_mlp, lambda x: x[:, kept_pixels]),
         "low-rank e=0.9": (factored, same)}, (64,))
print("\ndigits CNN")
compare({"dense": (cnn, same), "channels 50%, shrunk": (small, same)}, (8, 8, 1))


# %%
def make_wide_cnn(width):
    return keras.Sequential(
        [
            keras.Input((16 if FAST else 32, 16 if FAST else 32, 32)),
            keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu", name="conv3"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(10, name="classifier"),
        ],
        name="wide_cnn",
    )


keras.utils.set_random_seed(0)
wide = make_wide_cnn(128)
wide_small = ks.shrink(ks.prune_channels(wide, 0.5, layers=["conv1", "conv2", "conv3"]))
size = 16 if FAST else 32
print(f"wider CNN on {size}x{size}x32 inputs")
compare({"dense": (wide, same), "channels 50%, shrunk": (wide_small, same)}, (size, size, 32))

# %% [markdown]
# `benchmarks/real_savings.py` runs the same comparison with more repeats and seeds and records the
# results; its table is in the README.
#
# ## Summary
#
# ```python
# import keras_sparse as ks
#
# pruned = ks.prune_channels(model, 0.5, scorer="l2_norm", layers=[...])   # or ks.prune(..., pattern="channel")
# pruned.fit(...)                                                          # fine-tune, masks fixed
# small = ks.shrink(pruned)                                                # plain Keras, fewer units, same outputs
#
# sampled = ks.sample_columns(model, 0.5, "leverage", data=x_train)        # input-feature subsets, LS refit
# small = ks.shrink(sampled)                                               # drops unused units and inputs
#
# factored = ks.factorize(model, energy=0.9)                               # LowRankDense / LowRankConv2D
# ks.report(small)                                                         # real params and FLOPs
# ```

# %%
WORKDIR.cleanup()
