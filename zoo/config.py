"""Validated dataclass configs: one per model (as pythae does), and the training settings.

A model's hyper-parameters are the fields of its config class, and each field
carries everything said about it once: its type and default, a help line, the
choices of a string setting and a check of its value. The command-line flags
(`define_flags`, for training's settings and the server's options alike), their
help, the validation and the model's `get_config` all read the fields.
A variant inherits its parent's config and adds fields:

    @dataclasses.dataclass
    class AVAEConfig(VAEConfig):
        rho: float = setting(0.975, "Coupling strength ...", check=COUPLING)

Checks that relate a hyper-parameter to the architecture (e.g. a number of
mixture modes against the latent size) stay in the model's
`check_hyperparameters`.
"""

import dataclasses
import typing

import numpy as np
from absl import flags


def setting(default, help, choices=None, check=None):
    """A config field: its default, one line of help, allowed string values (per element of a tuple), a check.

    A field whose default is None (e.g. "the dataset's architecture") also accepts None.
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "check": check})


# Checks: each returns None for a valid value, else what the value must be (completed by the field's name).
def POSITIVE(value):
    return None if value > 0 else "must be positive"


def NON_NEGATIVE(value):
    return None if value >= 0 else "must be non-negative"


def AT_LEAST_ONE(value):
    return None if value >= 1 else "must be at least 1"


def COUPLING(value):
    """A coupling strength rho of p_rho(z'|z) = N(rho z, (1 - rho^2) I)."""
    return None if -1.0 < value < 1.0 else "must lie in (-1, 1)"


def CORRELATION(value):
    return None if -1.0 <= value <= 1.0 else "must lie in [-1, 1]"


def FRACTION(value):
    return None if 0 <= value <= 1 else "must lie in [0, 1]"


def _is_optional(annotation):
    return typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)


def field_type(annotation):
    """(base type, element type or None): int/float/bool/str, or tuple with its element type; Optional stripped."""
    if _is_optional(annotation):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return tuple, typing.get_args(annotation)[0]
    return annotation, None


class Config:
    """Base of a dataclass (frozen or not) that validates and normalises each field on construction: one clear sentence, as `error`.

    Fields are int, float, bool or str, a tuple of one of these (`tuple[float, ...]`, choices then apply per
    element), or Optional of these; a field whose default is None accepts None.
    """

    error: typing.ClassVar[type] = ValueError

    @classmethod
    def fields(cls):
        return dataclasses.fields(cls)

    @classmethod
    def typed_fields(cls):
        """(field, base type, element type) for every field."""
        hints = typing.get_type_hints(cls)
        return [(field, *field_type(hints[field.name])) for field in dataclasses.fields(cls)]

    def __post_init__(self):
        for field, kind, element in self.typed_fields():
            value = getattr(self, field.name)
            if value is None and field.default is None:
                continue
            value = self._coerce(field.name, value, kind, element)
            object.__setattr__(self, field.name, value)  # frozen dataclasses too
            choices = field.metadata.get("choices")
            for item in value if kind is tuple else (value,):
                if choices and item not in choices:
                    raise self.error(f"unknown {field.name} {item!r}; choose one of: {', '.join(choices)}")
            check = field.metadata.get("check")
            problem = check(value) if check else None
            if problem:
                shown = list(value) if kind is tuple else value
                raise self.error(f"{field.name} {problem}, got {shown!r}")
        self.check()

    def check(self):
        """Checks that involve several fields; raise `self.error`."""

    def _coerce(self, name, value, kind, element):
        if kind is tuple:
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise self.error(f"{name} must be a sequence of {element.__name__}, got {value!r}")
            return tuple(self._coerce(name, item, element, None) for item in value)
        if kind is float and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return float(value)  # 1 for a float setting means 1.0
        if kind is int and isinstance(value, np.integer):
            return int(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise self.error(f"{name} must be a {kind.__name__}, got {value!r}")
        return value

    @classmethod
    def split(cls, options):
        """(the entries of `options` that are fields of this config, the others)."""
        names = {field.name for field in cls.fields()}
        return {k: v for k, v in options.items() if k in names}, {k: v for k, v in options.items() if k not in names}

    def to_dict(self):
        return {
            f.name: list(v) if isinstance(v, tuple) else v
            for f in dataclasses.fields(self)
            for v in (getattr(self, f.name),)
        }


_DEFINE_BY_TYPE = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
}


def define_flags(config_class, module_name, flag_values=flags.FLAGS):
    """One absl flag per field of the `Config` dataclass `config_class` (its name, default, help and choices),
    listed by `--help` under `module_name`; `config_class(**values)` then validates the values given."""
    for field in config_class.fields():
        help_text, choices = field.metadata["help"], field.metadata["choices"]
        kwargs = {"module_name": module_name, "flag_values": flag_values}
        if choices:
            flags.DEFINE_enum(field.name, field.default, list(choices), help_text, **kwargs)
        else:
            _DEFINE_BY_TYPE[field.type](field.name, field.default, help_text, **kwargs)


@dataclasses.dataclass
class ModelConfig(Config):
    """Base of every model's config: its hyper-parameters."""
