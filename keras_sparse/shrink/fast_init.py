"""Create layers whose weights are assigned right after building.

Model tools (shrink, factorize, sample_columns) build new layers only to
overwrite their weights. On JAX every random initializer compiles a small
XLA program per shape (measured ~0.2-0.9 s each on a shared 2-core machine),
which dominated those tools' run time; ``"zeros"`` costs almost nothing. So
the layer is created with zero initializers, and its own initializers are
put back once it is built (its config is unchanged).
"""

import keras

__all__ = ["from_config_zero_init", "restore_initializers"]


def _initializer_keys(config):
    return [k for k, v in config.items() if k.endswith("_initializer") and v is not None]


def from_config_zero_init(cls, config):
    """``cls.from_config(config)`` with every ``*_initializer`` set to
    ``"zeros"``; call :func:`restore_initializers` after building."""
    keys = _initializer_keys(config)
    quick = dict(config)
    for key in keys:
        quick[key] = "zeros"
    layer = cls.from_config(quick)
    layer._keras_sparse_initializers = {key: config[key] for key in keys}
    return layer


def restore_initializers(layer):
    """Put back the initializers a :func:`from_config_zero_init` layer was
    configured with (no-op for other layers)."""
    saved = layer.__dict__.pop("_keras_sparse_initializers", None)
    if not saved:
        return layer
    for key, value in saved.items():
        initializer = keras.initializers.get(value)
        for attr in (key, "_" + key):
            if attr in layer.__dict__ or hasattr(type(layer), attr) or hasattr(layer, attr):
                object.__setattr__(layer, attr, initializer)
                break
    return layer
