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
# # Binary and low-precision weights
#
# A float32 weight takes 32 bits. Most of them do not need that many: a network trained to use
# **8 or 4 bits** per weight is usually as accurate, and a **binary** network (every weight +1 or -1,
# one bit) is often close. This tutorial trains such networks inside an ordinary `model.fit`:
#
# 1. a **binary MLP** on scikit-learn's digits: `ks.layers.SparseDense(kernel_quantizer="ste_sign")`,
#    the weights in the forward pass are exactly ±1, and `ks.report` shows 1 bit per weight;
# 2. **binary activations** too, with `input_quantizer="ste_sign"`;
# 3. training binary weights with **Bop** (`ks.optimizers.Bop`, no latent weights: it flips signs)
#    next to Adam for the rest of the model, and watching the **flip ratio** in the logs;
# 4. a **4-bit CNN** made from a plain Keras CNN with one call, `ks.quantize(model, 4)`
#    (convolutions included);
# 5. **pruning and 8-bit** composed (`ks.prune(ks.quantize(model, 8), ...)`);
# 6. **export**: `ks.strip` to plain Keras layers, Keras' own `model.quantize("int8")`, a packed
#    file with `ks.export` (binary weights at 1 bit), and what really got smaller.
#
# How it works, in one paragraph: a quantized layer keeps a float **latent** weight, which the optimizer
# trains and the `.keras` file saves. The forward pass uses `quantizer(latent)` (times the pruning mask,
# if any). Rounding has no useful gradient, so the backward pass uses a **straight-through estimator**:
# for `ste_sign` the gradient passes through unchanged where |w| ≤ 1 and is zero elsewhere.
#
# Run the whole file with `python tutorials/02_binary_and_low_precision.py` (a few minutes on two CPU
# cores), or with `KERAS_SPARSE_FAST=1` for a quick smoke run (well under a minute, lower accuracy).
# Any Keras backend works (`KERAS_BACKEND=jax`). Nothing is written outside a temporary directory.

# %%
import gzip
import os
import tempfile
import warnings

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_sparse as ks
from keras_sparse.demo import fast_mode

FAST = fast_mode()  # True when KERAS_SPARSE_FAST=1
EPOCHS = 3 if FAST else 50  # MLPs
EPOCHS_CNN = 2 if FAST else 30
EPOCHS_PRUNE = 2 if FAST else 20  # pruning + 8-bit fine-tuning
BATCH_SIZE = 32
WORKDIR = tempfile.TemporaryDirectory(prefix="keras_sparse_tutorial_")

print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, keras_sparse {ks.__version__}")
print("fast mode" if FAST else "full mode", "- files go to", WORKDIR.name)

# %% [markdown]
# ## The data
#
# `load_digits` ships with scikit-learn (1,797 8×8 images, nothing downloaded). Pixels are scaled to
# [0, 1] and a stratified 70/30 split gives 1,257 training and 540 test images: the set-up in which
# Larq, the reference binary-network library for Keras 2, reaches 98.8 % with binary weights.

# %%
x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")
x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.3, stratify=y, random_state=0
)
print(x_train.shape, x_test.shape)


def compile_model(model, optimizer=None):
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def accuracy(model, x=x_test, y=y_test):
    return model.evaluate(x, y, verbose=0)[1]


# %% [markdown]
# ## 1. A binary MLP
#
# The layers are keras_sparse's `SparseDense` (a `keras.layers.Dense` subclass) with a
# `kernel_quantizer`. The usual recipe for binary weights (BinaryConnect, Larq):
#
# - `kernel_quantizer="ste_sign"`: weights are `sign(w)`, ±1 (`sign(0)` is +1);
# - `kernel_constraint=ks.constraints.WeightClip(1.0)`: a latent weight beyond ±1 would get no gradient
#   from the straight-through estimator any more, so it is kept inside;
# - no bias, and a `BatchNormalization` after every layer: it rescales the ±1 sums (the last one
#   rescales the logits).
#
# Every layer is binary here, the first and the last included.


# %%
def binary_mlp(binary_activations=False, name="binary_mlp"):
    layers = [keras.Input((64,))]
    for i, units in enumerate((256, 256, 10)):
        layers.append(
            ks.layers.SparseDense(
                units,
                use_bias=False,
                kernel_quantizer="ste_sign",
                # Binary activations: the *input* of the 2nd and 3rd layer is binarized (the pixels
                # going into the first layer stay as they are).
                input_quantizer="ste_sign" if binary_activations and i > 0 else None,
                kernel_constraint=ks.constraints.WeightClip(1.0),
                name=f"dense_{i}",
            )
        )
        layers.append(keras.layers.BatchNormalization(name=f"bn_{i}"))
        if i < 2 and not binary_activations:
            layers.append(keras.layers.Activation("relu", name=f"relu_{i}"))
    return keras.Sequential(layers, name=name)


# %% [markdown]
# Binary weights keep flipping sign as long as the learning rate is constant, so the accuracy after the
# last epoch swings from run to run. Decaying the learning rate to zero settles them
# (`benchmarks/binary_digits.py`: 98.52 % constant, 98.83 % with a cosine decay, 3 seeds).

# %%
def decaying_adam(epochs):
    steps = epochs * int(np.ceil(len(x_train) / BATCH_SIZE))
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps))


keras.utils.set_random_seed(0)
binary = compile_model(binary_mlp(), decaying_adam(EPOCHS))
binary.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0)
binary_accuracy = accuracy(binary)
print(f"binary weights: test accuracy {binary_accuracy:.2%}")

# %% [markdown]
# The forward pass really uses ±1: `layer.kernel` is the *effective* kernel, `layer.latent_weight(...)`
# the float variable behind it.

# %%
layer = binary.get_layer("dense_1")
print("effective kernel values:", np.unique(keras.ops.convert_to_numpy(layer.kernel)))
latent = keras.ops.convert_to_numpy(layer.latent_weight("kernel"))
print(f"latent weights: float32 in [{latent.min():.3f}, {latent.max():.3f}]")

# %% [markdown]
# `ks.report` adds three columns for quantized models: **bits** per weight, **packed B** (the weights
# packed at that many bits, plus float BatchNorm and biases) and the share of multiply-accumulates that
# are **1-bit MACs** (binary weights *and* binary inputs: XNOR-popcount on hardware that has it).

# %%
report = ks.report(binary)
dense_layers = [row for row in report.rows if row["layer"].startswith("dense_")]
float_bytes = sum(row["dense_bytes"] for row in dense_layers)
packed_bytes = sum(row["packed_bytes"] for row in dense_layers)
print(
    f"\nbinarized layers: {float_bytes:,} B in float32, {packed_bytes:,} B packed at 1 bit "
    f"({float_bytes / packed_bytes:.0f}x smaller)"
)

# %% [markdown]
# ## 2. Binary activations
#
# With `input_quantizer="ste_sign"` the hidden activations are ±1 as well; the sign *is* the
# nonlinearity, so there is no ReLU. Now a binarized layer multiplies ±1 by ±1, which the report counts
# as 1-bit MACs.

# %%
keras.utils.set_random_seed(0)
binary_wa = compile_model(binary_mlp(binary_activations=True, name="binary_wa_mlp"),
                          decaying_adam(EPOCHS))
binary_wa.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0)
binary_wa_accuracy = accuracy(binary_wa)
share = ks.report(binary_wa, print_fn=None).totals["binary_mac_share"]
print(f"binary weights + activations: test accuracy {binary_wa_accuracy:.2%}, "
      f"1-bit MACs {share:.0%} of all")

# %% [markdown]
# ## 3. Bop: binary weights without latent weights
#
# Above, Adam trained float latent weights and only their sign was used. Helwegen et al. (2019) argue
# that for a binary weight the latent value is really just *inertia*, and propose **Bop**, which keeps a
# moving average `m` of each binary weight's gradient and **flips the sign** when `|m|` exceeds a
# threshold `τ` and points the same way as the weight:
#
#     m ← (1 − γ) m + γ g          flip w where |m| > τ and sign(m) = sign(w)
#
# Bop is for the binary kernels only; biases and BatchNorm still need a normal optimizer. A
# `ks.optimizers.CaseOptimizer` is one Keras optimizer made of several: each variable goes to the first
# case whose predicate accepts it, the rest to `default`. `ks.optimizers.binary_kernels(model)` is the
# predicate for "the latent kernels of this model's 1-bit layers". The case optimizer works in `fit` on
# every backend and is saved in the `.keras` file with the model.
#
# `ks.metrics.FlipRatio()` is a callback that logs the fraction of binary weights whose sign changed
# during each epoch (`flip_ratio`, and per layer): the natural "learning rate" of a binary network. It
# should fall as training converges.

# %%
keras.utils.set_random_seed(0)
bop_model = binary_mlp(name="bop_mlp")
bop = ks.optimizers.Bop(threshold=1e-5, gamma=1e-3)
case = ks.optimizers.CaseOptimizer(
    (ks.optimizers.binary_kernels(bop_model), bop),
    default=keras.optimizers.Adam(1e-3),
)
compile_model(bop_model, case)
history = bop_model.fit(
    x_train, y_train, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0,
    callbacks=[ks.metrics.FlipRatio()],
)
print("variables trained by Bop:", [v.path for v in case.variables_of(bop)])
flips = history.history["flip_ratio"]
shown = flips if len(flips) <= 8 else flips[:4] + flips[-4:]
print("flip ratio per epoch:", " ".join(f"{r:.4f}" for r in shown[: min(4, len(shown))]),
      "..." if len(flips) > 8 else "", " ".join(f"{r:.4f}" for r in shown[4:]))
bop_accuracy = accuracy(bop_model)
print(f"binary weights trained by Bop: test accuracy {bop_accuracy:.2%}")

# %% [markdown]
# Bop only ever flips signs, so every latent weight keeps the magnitude it was initialized with;
# the forward pass still sees ±1. Its two hyperparameters trade stability for speed: a larger `γ` or
# a smaller `τ` flips more. (Larq's defaults, `τ = 1e-8, γ = 1e-4`, are tuned for long ImageNet runs;
# a few thousand steps on digits want a larger `γ`.)

# %% [markdown]
# ## 4. A 4-bit CNN from a plain Keras model
#
# `ks.quantize(model, weights, activations=None, layers=None, skip_first=False, skip_last=False)`
# converts an existing Keras model, like `ks.prune` does: every supported layer (`Dense`, the
# convolutions, `Embedding`, ...) becomes its keras_sparse counterpart with the same weights and a
# quantizer. `weights` takes `"binary"`, `"ternary"`, a number of bits, or any quantizer object. An int
# `k` from 2 to 8 means `ks.quantizers.Uniform(bits=k)`: symmetric, one scale per output channel,
# straight-through rounding. (Keras' own `model.quantize` is post-training and skips `Conv2D`.)

# %%
x_train_img, x_test_img = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)


def make_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, name="classifier"),
        ],
        name="cnn",
    )


keras.utils.set_random_seed(0)
cnn4 = compile_model(ks.quantize(make_cnn(), 4))
cnn4.fit(x_train_img, y_train, epochs=EPOCHS_CNN, batch_size=BATCH_SIZE, verbose=0)
cnn4_accuracy = accuracy(cnn4, x_test_img)
print(f"4-bit CNN: test accuracy {cnn4_accuracy:.2%}")
for layer in cnn4.layers:
    if isinstance(layer, ks.layers.SparseMixin):
        values = keras.ops.convert_to_numpy(layer.kernel)
        levels = max(len(np.unique(values[..., c])) for c in range(values.shape[-1]))
        print(f"  {layer.name:10s} {type(layer).__name__:12s} {layer.kernel_quantizer!r}: "
              f"at most {levels} distinct values per output channel")
ks.report(cnn4)

# %% [markdown]
# At 4 bits a symmetric quantizer has 15 levels (−7…7 times a per-channel scale), so no output channel
# uses more than 15 distinct values.
#
# ## 5. Pruning and 8-bit, composed
#
# Pruning and quantization are not two layer families: one layer carries a mask, a quantizer, both or
# neither, and the effective kernel is `mask × quantizer(latent)`. So the two conversions compose, in
# either order. Here a float MLP is trained, made 8-bit, then pruned gradually to 80 % while
# fine-tuning (the `ks.callbacks.Pruning()` callback runs the schedule, see tutorial 01).


# %%
def make_mlp():
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu", name="hidden1"),
            keras.layers.Dense(256, activation="relu", name="hidden2"),
            keras.layers.Dense(10, name="classifier"),
        ],
        name="mlp",
    )


keras.utils.set_random_seed(0)
float_mlp = compile_model(make_mlp())
float_mlp.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0)
float_accuracy = accuracy(float_mlp)

steps = EPOCHS_PRUNE * int(np.ceil(len(x_train) / BATCH_SIZE))
schedule = ks.schedules.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=max(1, steps // 2),
                                        frequency=max(1, steps // 20))
small = compile_model(ks.prune(ks.quantize(float_mlp, 8), 0.8, schedule=schedule))
small.fit(x_train, y_train, epochs=EPOCHS_PRUNE, batch_size=BATCH_SIZE, verbose=0,
          callbacks=[ks.callbacks.Pruning()])
small_accuracy = accuracy(small)
print(f"float MLP {float_accuracy:.2%} -> 8-bit + 80 % pruned {small_accuracy:.2%}")
small_report = ks.report(small)

# %% [markdown]
# The report's **packed B** now counts 8 bits per *kept* weight plus the index of the kept positions
# (whichever is smaller: a bitmap or a dense 8-bit array).
#
# ## 6. Export: plain Keras, int8, and what got smaller
#
# `ks.strip` returns a model of plain Keras layers whose kernels are the effective values: on the
# 8-bit grid, with exact zeros where pruned. Anyone can load it with plain Keras. From there Keras'
# own post-training `model.quantize("int8")` stores the kernels as int8 (the 8-bit grid survives it
# almost exactly, and so do the zeros), and that model saves and loads too.


# %%
def gzip_size(model, name):
    """Save ``model`` (uncompiled: no optimizer state in the file) and gzip it."""
    path = os.path.join(WORKDIR.name, name + ".keras")
    model.save(path)
    with open(path, "rb") as f:
        return path, len(gzip.compress(f.read(), 9))


plain = ks.strip(small)
print("stripped layers:", [type(layer).__name__ for layer in plain.layers])
kernel = keras.ops.convert_to_numpy(plain.get_layer("hidden2").kernel)
print(f"hidden2 kernel: {np.mean(kernel == 0):.0%} exact zeros, "
      f"at most {max(len(np.unique(kernel[:, j])) for j in range(kernel.shape[1]))} "
      "distinct values per output")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # InputLayer has no int8 mode
    plain.quantize("int8")
plain_accuracy = np.mean(np.argmax(plain.predict(x_test, verbose=0), axis=1) == y_test)

_, float_gz = gzip_size(ks.strip(float_mlp), "float_mlp")  # an uncompiled copy
int8_path, int8_gz = gzip_size(plain, "int8_mlp")
reloaded = keras.saving.load_model(int8_path)
np.testing.assert_allclose(
    reloaded.predict(x_test, verbose=0), plain.predict(x_test, verbose=0), rtol=1e-5, atol=1e-5
)
print(f"Keras int8 model: test accuracy {plain_accuracy:.2%}, reloads with plain Keras")

# %% [markdown]
# ### Packed export: `ks.export`
#
# A `.keras` file stores every weight in a whole byte or more, so a binary model saved after `ks.strip`
# is *not* 32× smaller on disk. `ks.export(model, path)` writes the stripped model with each weight
# in its smallest exact encoding: binary kernels at 1 bit, k-bit kernels as packed integer codes with a
# per-channel scale, pruned kernels as a bitmap plus the kept values, everything else (BatchNorm,
# biases) as float32. `ks.load_exported(path)` reads it back as a plain Keras model with exactly the
# stripped weights. (Input quantizers have no plain Keras layer: `ks.strip` drops them with a warning,
# so the binary-activation model is not exported here.)


# %%
def export_size(model, name):
    path = os.path.join(WORKDIR.name, name + ".kspk")
    info = ks.export(model, path)
    restored = ks.load_exported(path)
    np.testing.assert_allclose(
        restored.predict(x_test, verbose=0), ks.strip(model).predict(x_test, verbose=0),
        rtol=1e-5, atol=1e-5,
    )
    return info["bytes"]


exported = {
    "float": export_size(float_mlp, "float_mlp"),
    "small": export_size(small, "small_mlp"),
    "binary": export_size(binary, "binary_mlp"),
    "bop": export_size(bop_model, "bop_mlp"),
}
print("exported files reload as plain Keras models with identical predictions")

# %% [markdown]
# What got smaller, side by side: real file sizes (`.keras` gzipped at level 9, and the `ks.export`
# archive) and the packed size `ks.report` computes.

# %%
rows = [
    ("float MLP 64-256-256-10", float_accuracy, f"{float_gz:,}", exported["float"],
     ks.report(float_mlp, print_fn=None).totals["packed_bytes"]),
    ("8-bit + 80 % pruned", small_accuracy, "-", exported["small"],
     small_report.totals["packed_bytes"]),
    ("  -> stripped, Keras int8", plain_accuracy, f"{int8_gz:,}", None, None),
    ("binary weights (MLP with BatchNorm)", binary_accuracy, "-", exported["binary"],
     report.totals["packed_bytes"]),
    ("binary weights, Bop", bop_accuracy, "-", exported["bop"],
     ks.report(bop_model, print_fn=None).totals["packed_bytes"]),
    ("binary weights + activations", binary_wa_accuracy, "-", None,
     ks.report(binary_wa, print_fn=None).totals["packed_bytes"]),
]
print(f"{'model':36s} {'test acc':>8s} {'.keras gz B':>12s} {'ks.export B':>12s} {'report B':>9s}")
for name, acc, gz, kspk, packed in rows:
    kspk = "-" if kspk is None else f"{kspk:,}"
    packed = "-" if packed is None else f"{packed:,}"
    print(f"{name:36s} {acc:8.2%} {gz:>12s} {kspk:>12s} {packed:>9s}")

# %% [markdown]
# Where to go next:
#
# - other quantizers: `ks.quantizers.MagnitudeAwareSign` (XNOR-Net scaling), `SteTern` (ternary),
#   `DoReFa`, `LSQ` (a learned step size) and `PACT` (a learned activation clip);
# - `benchmarks/binary_digits.py` runs this set-up with three seeds and 100 epochs for every variant,
#   and `benchmarks/quant_overhead.py` measures the training-step cost of quantization against dense.

# %%
WORKDIR.cleanup()
