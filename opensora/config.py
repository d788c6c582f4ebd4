"""YAML configuration with command-line overrides, checked against a declared schema.

A script declares its options once (:class:`Option`); :func:`parse_config` then reads
``--config file.yaml``, applies every command-line override, converts and checks each value
with the same converter whether it came from YAML or the command line, and reports an unknown
key together with the closest valid one. Both spellings of a flag work (``--num-frames`` and
``--num_frames``). Dictionary options (``model``, ``scheduler``, ...) accept dotted overrides
such as ``--scheduler.num_sampling_steps 10``.

Every numeric option declares its range (``min``/``max`` inclusive, ``above`` exclusive); a value outside
it, or a float that is NaN or infinite, is an error naming the option and the range. That is the one
place numeric flags are checked (``tests/test_bad_inputs.py`` checks that no numeric option lacks one).
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import yaml

from .errors import InputError
from .utils.files import read_text


class ConfigError(InputError):
    """A configuration value or key is wrong; the message says how to fix it."""


_MISSING = object()


def str2bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise ConfigError(f"expected a boolean (true/false), got {value!r}")


def optional(converter: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Allow ``None`` (YAML ``null`` or the string ``none``) besides the converter's values."""

    def convert(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return converter(value)

    convert.__name__ = f"optional_{getattr(converter, '__name__', 'value')}"
    convert.inner = converter
    return convert


def numeric(converter: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Mark a custom converter as numeric (its Option must then declare a range)."""
    converter.numeric = True
    return converter


def is_numeric(converter: Callable[[Any], Any]) -> bool:
    converter = getattr(converter, "inner", converter)
    return converter in (int, float) or getattr(converter, "numeric", False)


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")


def yaml_value(value: Any) -> Any:
    """Command-line text for a dictionary or free-form option is read as YAML (``{a: 1}``, ``[1, 2]``)."""
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"{value!r} is not valid YAML ({_yaml_problem(err)})") from None


@dataclass
class Option:
    """One configuration key: its converter (also the type check), default and help."""

    name: str
    type: Callable[[Any], Any] = str
    default: Any = None
    help: str = ""
    choices: Sequence[Any] | None = None
    nargs: str | None = None  # "+" / "*": a list of values
    is_dict: bool = False  # a mapping; contents are checked by whoever consumes it
    aliases: Sequence[str] = field(default_factory=tuple)
    min: float | None = None  # inclusive bounds of a numeric value (each element of a list)
    max: float | None = None
    above: float | None = None  # exclusive lower bound (a learning rate: above=0)

    def convert(self, value: Any, source: str) -> Any:
        try:
            if self.is_dict:
                value = yaml_value(value)
                if value is not None and not isinstance(value, dict):
                    raise ConfigError(f"expected a mapping, got {type(value).__name__}")
                return value
            if self.nargs and value is not None:
                items = value if isinstance(value, (list, tuple)) else [value]
                converted = [self.type(v) for v in items]
                for v in converted:
                    self._check_choice(v)
                    self._check_range(v)
                return converted
            converted = self.type(value)
            self._check_choice(converted)
            self._check_range(converted)
            return converted
        except ConfigError as err:
            raise ConfigError(f"{self.name} ({source}): {err}") from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{self.name} ({source}): cannot read {value!r}: {err}") from None

    def _check_choice(self, value: Any) -> None:
        if self.choices is not None and value is not None and value not in self.choices:
            raise ConfigError(f"{value!r} is not allowed; choose one of {list(self.choices)}")

    def range_text(self) -> str:
        def show(v):
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        low = f"> {show(self.above)}" if self.above is not None else f">= {show(self.min)}" if self.min is not None else ""
        high = f"<= {show(self.max)}" if self.max is not None else ""
        return " and ".join(part for part in (low, high) if part) or "finite"

    def _check_range(self, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        bad = isinstance(value, float) and not math.isfinite(value)
        bad = bad or (self.min is not None and value < self.min) or (self.max is not None and value > self.max)
        bad = bad or (self.above is not None and value <= self.above)
        if bad:
            raise ConfigError(f"{value!r} is out of range; it must be {self.range_text()}")


class Config(dict):
    """A checked configuration: a dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _canonical(name: str) -> str:
    return name.strip().lstrip("-").replace("-", "_")


def closest_key_hint(key: str, valid: Iterable[str]) -> str:
    matches = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def unknown_key_error(key: str, valid: Iterable[str], where: str) -> ConfigError:
    valid = sorted(valid)
    return ConfigError(f"unknown key {key!r} in {where}{closest_key_hint(key, valid)} (valid keys: {', '.join(valid)})")


class Schema:
    """The options of one script."""

    def __init__(self, options: Iterable[Option], description: str = ""):
        self.options: dict[str, Option] = {}
        self.description = description
        self._alias: dict[str, str] = {}
        for opt in options:
            self.add(opt)

    def add(self, option: Option) -> None:
        self.options[option.name] = option
        for alias in (option.name, *option.aliases):
            self._alias[_canonical(alias)] = option.name

    def resolve(self, key: str, where: str) -> str:
        name = self._alias.get(_canonical(key))
        if name is None:
            raise unknown_key_error(_canonical(key), self.options, where)
        return name

    def parse(self, argv: Sequence[str] | None = None, config_path: str | None = None) -> Config:
        return parse_config(self, argv, config_path)


def _argparser(schema: Schema) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=schema.description, allow_abbrev=False)
    parser.add_argument("--config", "-c", default=None, help="YAML file; command-line flags override its keys")
    for opt in schema.options.values():
        spellings = {f"--{opt.name}", f"--{opt.name.replace('_', '-')}"}
        for alias in opt.aliases:
            spellings |= {f"--{alias}", f"--{alias.replace('_', '-')}"}
        kwargs: dict[str, Any] = {"dest": opt.name, "default": _MISSING, "help": _help_text(opt)}
        if getattr(opt.type, "inner", opt.type) is str2bool:
            kwargs.update(nargs="?", const="true")  # `--flag` or `--flag True`
        elif opt.nargs:
            kwargs.update(nargs=opt.nargs)
        parser.add_argument(*sorted(spellings), **kwargs)
    return parser


def _help_text(opt: Option) -> str:
    text = opt.help or ""
    if opt.choices is not None:
        text += f" (one of {list(opt.choices)})"
    elif any(v is not None for v in (opt.min, opt.max, opt.above)):
        text += f" (range: {opt.range_text()})"
    return f"{text} [default: {opt.default!r}]".strip().replace("%", "%%")  # argparse formats help with %


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    text = read_text(path, "config file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: invalid YAML at {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def parse_config(schema: Schema, argv: Sequence[str] | None = None, config_path: str | None = None) -> Config:
    """Defaults <- YAML (``--config`` or ``config_path``) <- command line; every value converted and checked."""
    parser = _argparser(schema)
    args, rest = parser.parse_known_args(argv)
    dotted = _parse_dotted(rest, schema)

    values: dict[str, Any] = {name: opt.default for name, opt in schema.options.items()}
    path = args.config or config_path
    if path:
        for key, value in load_yaml(path).items():
            name = schema.resolve(str(key), f"config file {path}")
            values[name] = schema.options[name].convert(value, f"config file {path}")
    for name in schema.options:
        value = getattr(args, name)
        if value is not _MISSING:
            values[name] = schema.options[name].convert(value, "command line")
    for (name, subkey), value in dotted:
        current = dict(values.get(name) or {})
        try:
            current[subkey] = yaml_value(value)
        except ConfigError as err:
            raise ConfigError(f"--{name}.{subkey}: {err}") from None
        values[name] = current
    cfg = Config(values)
    cfg["config"] = path
    return cfg


def _parse_dotted(rest: list[str], schema: Schema) -> list[tuple[tuple[str, str], Any]]:
    """``--section.key value`` overrides inside dictionary options; anything else is an error."""
    out = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected command-line value {token!r}")
        key, _, inline = token[2:].partition("=")
        if "." not in key:
            raise schema_unknown(schema, key)
        section, subkey = key.split(".", 1)
        name = schema.resolve(section, "command line")
        if not schema.options[name].is_dict:
            raise ConfigError(f"--{key}: {name!r} is not a section, it takes a value directly")
        if inline:
            value = inline
            i += 1
        else:
            if i + 1 >= len(rest):
                raise ConfigError(f"--{key} needs a value")
            value = rest[i + 1]
            i += 2
        out.append(((name, _canonical(subkey)), value))
    return out


def schema_unknown(schema: Schema, key: str) -> ConfigError:
    return unknown_key_error(_canonical(key), schema.options, "command line")


def check_kwargs(kwargs: dict, valid: Iterable[str], where: str) -> None:
    """Reject keys a constructor does not take, naming the closest valid one."""
    valid = set(valid)
    for key in kwargs:
        if key not in valid:
            raise unknown_key_error(key, valid, where)
