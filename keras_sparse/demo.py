"""``keras-sparse demo``: a dense and a 90 %-sparse MLP on scikit-learn's
digits, trained side by side, offline, in about a minute on 2 cores."""

import gzip
import os
import tempfile

import keras
import numpy as np

import keras_sparse as ks

FAST_ENV = "KERAS_SPARSE_FAST"


def fast_mode():
    """Whether ``KERAS_SPARSE_FAST=1`` asks for a quick run (tests, CI)."""
    return os.environ.get(FAST_ENV, "") not in ("", "0")


def load_digits_split(seed=0):
    """Digits (8x8, 1797 images) scaled to [0, 1], stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)


def digits_mlp(hidden=(300, 100)):
    """The anchor MLP 64-300-100-10 (logits out)."""
    layers = [keras.Input((64,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers += [keras.layers.Dense(10)]
    return keras.Sequential(layers)


def _compile(model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _gzip_size(model):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        with open(path, "rb") as f:
            return len(gzip.compress(f.read(), 9))


def run(epochs=None, sparsity=0.9, seed=0, print_fn=print):
    """Train both models and print a side-by-side table. Returns the rows."""
    if epochs is None:
        epochs = 3 if fast_mode() else 60
    x_train, x_test, y_train, y_test = load_digits_split(seed)
    steps = epochs * int(np.ceil(len(x_train) / 32))
    keras.utils.set_random_seed(seed)
    dense = digits_mlp()
    keras.utils.set_random_seed(seed)
    sparse = ks.prune(
        digits_mlp(),
        sparsity,
        schedule=ks.schedules.PolynomialDecay(
            0.0, sparsity, begin_step=0, end_step=max(1, int(steps * 0.6)), frequency=50
        ),
    )
    rows = []
    for name, model, callbacks in (
        ("dense", dense, []),
        (f"{sparsity:.0%} sparse", sparse, [ks.callbacks.Pruning()]),
    ):
        _compile(model)
        model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0,
                  callbacks=callbacks)
        accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
        totals = ks.report(model, print_fn=None).totals
        rows.append(dict(
            model=name,
            accuracy=accuracy,
            sparsity=totals["sparsity"],
            nonzeros=totals["nonzeros"],
            dense_bytes=totals["dense_bytes"],
            compressed_bytes=totals["compressed_bytes"],
            stripped_gzip_bytes=_gzip_size(ks.strip(model)),
            flops=totals["effective_flops"],
        ))
    header = ("model", "test acc", "sparsity", "non-zeros", "dense B",
              "compressed B", ".keras gzip B", "FLOPs/example")
    lines = [header]
    for r in rows:
        lines.append((r["model"], f"{100 * r['accuracy']:.2f}%", f"{100 * r['sparsity']:.1f}%",
                      f"{r['nonzeros']:,}", f"{r['dense_bytes']:,}", f"{r['compressed_bytes']:,}",
                      f"{r['stripped_gzip_bytes']:,}", f"{r['flops']:,}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    if print_fn is not None:
        print_fn(f"keras_sparse demo: MLP 64-300-100-10 on digits, {epochs} epochs, "
                 f"{len(x_train)} train / {len(x_test)} test")
        for i, line in enumerate(lines):
            print_fn("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(line, widths))))
            if i == 0:
                print_fn("  ".join("-" * w for w in widths))
    return rows
