"""Argument checks shared by the public API.

Every check raises with a message that names the argument and shows the
value it received (``Received: name=value``): :class:`ArgumentTypeError`
for a value of the wrong type, ``ValueError`` for a value of the right type
out of range. This module imports nothing else from the package, so any
module can use it.
"""

import numbers
import os

import numpy as np

__all__ = [
    "ArgumentTypeError",
    "check_bool",
    "check_callable",
    "check_int",
    "check_model",
    "check_number",
    "check_path",
    "describe",
    "type_error",
]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type.

    A ``TypeError``, and also a ``ValueError``: these checks raised
    ``ValueError`` before, and code that catches it keeps working.
    """


def describe(value, limit=120):
    """``repr(value)``, cut to ``limit`` characters (a large array or a
    model's repr would drown the message)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_error(name, value, expected):
    """The :class:`ArgumentTypeError` for argument ``name``: it must be
    ``expected`` (a phrase, e.g. ``"a bool"``) and received ``value``."""
    return ArgumentTypeError(
        f"`{name}` must be {expected}. "
        f"Received: {name}={describe(value)} (of type {type(value).__name__})"
    )


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_model(model, name="model"):
    """Raise unless ``model`` is a Keras model (Sequential, functional or
    subclassed); returns it.

    Raises:
        ArgumentTypeError: for anything else (``None``, a string, a single
            layer, ...).
    """
    import keras

    if not isinstance(model, keras.Model):
        expected = "a Keras model (Sequential, functional or subclassed)"
        if isinstance(model, keras.layers.Layer):
            expected += "; wrap a single layer in a keras.Sequential"
        raise type_error(name, model, expected)
    return model


def check_bool(value, name):
    """Raise :class:`ArgumentTypeError` unless ``value`` is a bool; returns it."""
    if not isinstance(value, (bool, np.bool_)):
        raise type_error(name, value, "a bool")
    return bool(value)


def check_int(value, name, minimum=None, allow_none=False):
    """Validate an integer (numpy integers too, not bools) of at least
    ``minimum``; returns it as a Python int (or ``None`` when allowed).

    Raises:
        ArgumentTypeError: for a value that is not an integer.
        ValueError: for an integer below ``minimum``.
    """
    if value is None and allow_none:
        return None
    if not _is_int(value):
        kind = "a positive integer" if minimum == 1 else "an integer"
        raise type_error(name, value, kind + (" or None" if allow_none else ""))
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_number(value, name, minimum=None, maximum=None, low_open=False, allow_none=False):
    """Validate a finite real number in ``[minimum, maximum]`` (``(minimum,
    maximum]`` with ``low_open``); returns it as a Python float.

    Raises:
        ArgumentTypeError: for a value that is not a real number.
        ValueError: for NaN, an infinity or a number out of range.
    """
    if value is None and allow_none:
        return None
    if not _is_real(value):
        raise type_error(name, value, "a number" + (" or None" if allow_none else ""))
    number = float(value)
    low_ok = minimum is None or (number > minimum if low_open else number >= minimum)
    high_ok = maximum is None or number <= maximum
    if not np.isfinite(number) or not (low_ok and high_ok):
        if minimum is not None and maximum is not None:
            bound = f"in {'(' if low_open else '['}{minimum}, {maximum}]"
        elif minimum is not None:
            bound = f"{'>' if low_open else '>='} {minimum}"
        elif maximum is not None:
            bound = f"<= {maximum}"
        else:
            bound = ""
        raise ValueError(
            f"`{name}` must be a finite number{' ' + bound if bound else ''}. "
            f"Received: {name}={value!r}"
        )
    return number


def check_callable(value, name, allow_none=False):
    """Raise :class:`ArgumentTypeError` unless ``value`` is callable (or
    ``None`` when allowed); returns it."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise type_error(name, value, "callable" + (" or None" if allow_none else ""))
    return value


def check_path(value, name="path"):
    """Raise :class:`ArgumentTypeError` unless ``value`` is a file path (a
    string or an ``os.PathLike``); returns it."""
    if not isinstance(value, (str, os.PathLike)):
        raise type_error(name, value, "a file path (a str or an os.PathLike)")
    return value


def pyplot(what):
    """``matplotlib.pyplot``, or an ``ImportError`` saying that ``what``
    (e.g. ``"SensitivityTable.plot"``) needs the ``plot`` extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            f"{what} needs matplotlib: install the `plot` extra "
            "(pip install 'keras-sparse[plot]') or matplotlib itself."
        ) from error
    return plt
