"""Shared machinery for floor-2 config objects: registration and lookup.

Each family (schedules, patterns, scorers, distributions, ...) keeps a dict of
snake_case aliases. ``register`` makes a class Keras-serializable under the
``keras_sparse`` package and records its alias; ``lookup`` turns a string, a
config dict or an instance into an instance.
"""

import keras

PACKAGE = "keras_sparse"


def register(registry, *aliases, name=None):
    """Class decorator: register with Keras (as ``keras_sparse>name``,
    default the class name) and under ``aliases``."""

    def decorator(cls):
        cls = keras.saving.register_keras_serializable(package=PACKAGE, name=name)(cls)
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
