"""Shared machinery for floor-2 config objects: registration and lookup.

Each family (schedules, patterns, scorers, distributions, ...) keeps a dict of
snake_case aliases. ``register`` makes a class Keras-serializable under the
``keras_sparse`` package and records its alias; ``lookup`` turns a string, a
config dict or an instance into an instance.
"""

import keras

PACKAGE = "keras_sparse"


def register(registry, *aliases, name=None, package=PACKAGE):
    """Class decorator: register with Keras (as ``package>name``, by
    default ``keras_sparse>`` and the class name) and under ``aliases``."""

    def decorator(cls):
        cls = keras.saving.register_keras_serializable(package=package, name=name)(cls)
        for alias in aliases:
            registry[alias] = cls
        return cls

    return decorator


def lookup(identifier, base_cls, registry, arg_name, parse_string=None):
    """Resolve ``identifier`` to an instance of ``base_cls``.

    Accepts an instance, a registered alias, a serialized config dict, or any
    string ``parse_string`` understands. Raises ``ValueError`` naming
    ``arg_name`` otherwise.
    """
    if isinstance(identifier, base_cls):
        return identifier
    if isinstance(identifier, str):
        key = identifier.strip().lower()
        if key in registry:
            return registry[key]()
        if parse_string is not None:
            parsed = parse_string(key)
            if parsed is not None:
                return parsed
        raise ValueError(
            f"Unknown {arg_name}. Expected one of {sorted(registry)} or a "
            f"{base_cls.__name__} instance. Received: {arg_name}={identifier!r}"
        )
    if isinstance(identifier, dict):
        try:
            obj = keras.saving.deserialize_keras_object(identifier)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"Could not deserialize `{arg_name}` ({error}). "
                f"Received: {arg_name}={identifier!r}"
            ) from None
        if isinstance(obj, base_cls):
            return obj
    raise ValueError(
        f"Could not interpret `{arg_name}` as a {base_cls.__name__}. "
        f"Received: {arg_name}={identifier!r}"
    )


def serialize(obj):
    """Serialize a config object (or ``None``) for a layer config."""
    return None if obj is None else keras.saving.serialize_keras_object(obj)


def public_register(registry, base_cls, family, *aliases, package="Custom", name=None):
    """The ``register`` of a family module: a class decorator for a user's
    subclass of ``base_cls``, made Keras-serializable (as ``package>name``)
    and resolvable by the family's ``get`` under each alias."""
    for alias in aliases:
        if not isinstance(alias, str) or not alias.strip() or alias != alias.strip().lower():
            raise ValueError(
                f"{family} aliases are non-empty lowercase strings. Received: alias={alias!r}"
            )
        if alias in registry:
            raise ValueError(
                f"The {family} alias {alias!r} is taken by {registry[alias].__name__}. "
                f"Received: alias={alias!r}"
            )

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, base_cls)):
            raise TypeError(
                f"Only subclasses of {base_cls.__name__} can be registered as a {family}. "
                f"Received: {cls!r}"
            )
        return register(registry, *aliases, name=name, package=package)(cls)

    return decorator


def deserialize_in(config, base_cls, registry, arg_name, parse_string=None):
    """The ``deserialize`` of a family module: the object of a config dict
    made by ``serialize`` (``None`` for ``None``)."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise TypeError(
            f"`{arg_name}` must be a config dict made by `serialize`. "
            f"Received: {arg_name}={config!r} (of type {type(config).__name__})"
        )
    return lookup(config, base_cls, registry, arg_name, parse_string)


class ConfigObject:
    """Base for hyperparameter-only objects: equality and repr by config."""

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def family_api(base_cls, registry, family, parse_string=None):
    """``(deserialize, register)`` of a family module (schedules, patterns,
    ...): ``deserialize(config)`` gives the object of a config dict made by
    ``serialize`` (``None`` for ``None``; ``TypeError`` for anything but a
    dict, ``ValueError`` for a dict of another family); ``register(*aliases,
    package="Custom", name=None)`` is a class decorator for a user's
    ``base_cls`` subclass (Keras-serializable, resolved by ``get`` under each
    snake_case alias)."""

    def deserialize(config):
        return deserialize_in(config, base_cls, registry, family, parse_string)

    def register(*aliases, package="Custom", name=None):
        return public_register(registry, base_cls, family, *aliases, package=package, name=name)

    deserialize.__doc__ = (
        f"The {family} of a config dict made by ``serialize`` (``None`` for ``None``).\n\n"
        "Raises:\n    TypeError: for something other than a dict or ``None``.\n"
        f"    ValueError: for a dict that is not a {family} config.\n"
    )
    register.__doc__ = (
        f"Class decorator registering your own {base_cls.__name__} subclass: it becomes "
        "Keras-serializable (as ``package>name``) and ``get`` resolves each snake_case "
        f"alias to it.\n\nExample:\n>>> @register(\"my_{family}\")\n"
        f"... class My{base_cls.__name__}({base_cls.__name__}):\n...     ...\n"
    )
    return deserialize, register
