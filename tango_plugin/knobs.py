"""Integration knobs: the one place where `tango_*` names map onto `TangoConfig` and `enable` options.

Every integration (lmms-eval `--model_args`, a `tango` section of a model's `config.json`, VLMEvalKit kwargs) speaks
the same names, so a setting reads the same everywhere:

- `tango`: on / off (default on when any `tango_*` knob is given through an integration that defaults to on).
- `tango_ratio`: `TangoConfig.retention_ratio` (the short name of the most used knob).
- `tango_preset`: start from a preset (`TangoConfig.from_preset`), the other knobs override it.
- `tango_<field>`: any `TangoConfig` field, e.g. `tango_strategy`, `tango_context_ratio`, `tango_sink_positions`.
- `tango_fps`, `tango_pool_mode`, `tango_newline`, `tango_image_highres`: options of `tango_plugin.enable`.
- `tango_report`: a path; the integration writes its per-sample JSON report there.

Values may come typed (from JSON or Python) or as text (from a command line such as `--model_args a=1,b=x`); text is
parsed to the field's type: `true/false/yes/no/on/off/1/0` for booleans, `none`/`null` for optional fields, a JSON
list (`[0,5,10]`) or `;`-separated integers (`0;5;10`) for `sink_positions`. An unknown `tango_*` name or a value of
the wrong type raises `ValueError` naming the knob, its value and what is allowed; range checks are
`TangoConfig`'s own.

This module is core layer: it imports only `tango_plugin.config` and `tango_plugin.presets`.

Example:
    ```python
    >>> from tango_plugin.knobs import config_from_knobs, split_knobs
    >>> knobs, rest = split_knobs({"pretrained": "Qwen/Qwen2-VL-2B-Instruct", "tango_ratio": "0.25",
    ...                            "tango_report": "out.json"})
    >>> cfg, options, extras = config_from_knobs(knobs)
    >>> cfg.retention_ratio, options, extras["report"]
    (0.25, {}, 'out.json')
    ```
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Dict, Mapping, Optional, Tuple

from .config import TangoConfig
from .presets import get_preset, list_presets

PREFIX = "tango_"
#: the on/off knob
SWITCH = "tango"
#: short names of TangoConfig fields
ALIASES = {"tango_ratio": "retention_ratio"}
#: knobs that are options of `tango_plugin.enable` (adapter options): name -> allowed values (None: a number > 0).
#: `fps` is every adapter's; a model family declares its own with `register_enable_option` when it is imported
#: (LLaVA-OneVision: `pool_mode`, `newline`, `image_highres`), so the values live with the code that reads them.
ENABLE_OPTIONS: Dict[str, Optional[Tuple[str, ...]]] = {"fps": None}


def register_enable_option(name: str, allowed: Tuple[str, ...]) -> None:
    """Make the adapter option `name` a knob (`tango_<name>`) whose value is one of `allowed`. Registering the same
    name twice is allowed only with the same values (two families sharing an option must agree on it)."""
    allowed = tuple(allowed)
    if not name.isidentifier() or name in EXTRAS or not allowed or not all(isinstance(a, str) for a in allowed):
        raise ValueError(f"register_enable_option({name!r}, {allowed!r}): expected an identifier that is not an "
                         f"integration knob ({', '.join(EXTRAS)}) and a non-empty tuple of strings")
    if ENABLE_OPTIONS.get(name, allowed) != allowed:
        raise ValueError(f"enable option {name!r} is already registered with values {ENABLE_OPTIONS[name]}; "
                         f"cannot register it again with {allowed}")
    if name in {f.name for f in dataclasses.fields(TangoConfig)}:
        raise ValueError(f"register_enable_option({name!r}): that is a TangoConfig field, not an adapter option")
    ENABLE_OPTIONS[name] = allowed
#: knobs the integration itself consumes (not part of the config): name -> help
EXTRAS = {"report": "path of the per-sample JSON report the integration writes",
          "capture": "vLLM: folder where the worker saves each pruned video's engine inputs and plan (parity checks, "
                     "debugging)"}

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null", "")


def _field_types() -> Dict[str, Any]:
    # `from __future__ import annotations` in config.py: resolve the annotation strings to real types
    return typing.get_type_hints(TangoConfig)


def allowed_knobs() -> list:
    """Every knob name an integration accepts, sorted."""
    names = {SWITCH, "tango_preset", *ALIASES, *(PREFIX + f.name for f in dataclasses.fields(TangoConfig))}
    names |= {PREFIX + n for n in ENABLE_OPTIONS} | {PREFIX + n for n in EXTRAS}
    return sorted(names)


def is_knob(name: str) -> bool:
    """True for `tango` and every `tango_*` name (known or not: unknown ones are errors, not pass-through)."""
    return name == SWITCH or name.startswith(PREFIX)


def split_knobs(kwargs: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split keyword arguments into (tango knobs, everything else), both in their original order."""
    knobs = {k: v for k, v in kwargs.items() if is_knob(k)}
    rest = {k: v for k, v in kwargs.items() if not is_knob(k)}
    return knobs, rest


def knobs_help() -> Dict[str, str]:
    """Knob name -> help text (for `--help` screens and docs)."""
    out = {SWITCH: "turn pruning on (true) or off (false)",
           "tango_preset": "start from a preset: " + ", ".join(list_presets()),
           "tango_ratio": "short for tango_retention_ratio"}
    out.update({PREFIX + k: v for k, v in TangoConfig.help().items()})
    out.update({PREFIX + "fps": "enable option: frames per second of the sampled frames (when the integration "
                                "cannot see the real frame times)"})
    out.update({PREFIX + k: "enable option: " + " / ".join(v) for k, v in ENABLE_OPTIONS.items() if v})
    out.update({PREFIX + k: v for k, v in EXTRAS.items()})
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------ parsing
def _bad(knob: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{knob}={value!r} is not allowed; expected {allowed}")


def parse_bool(knob: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # lmms-eval turns "1" into the int 1
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(knob, value, "true or false (also yes/no, on/off, 1/0)")


def _parse_int(knob: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _bad(knob, value, "an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _bad(knob, value, "an integer")


def _parse_float(knob: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _bad(knob, value, "a number")


def _parse_int_list(knob: str, value: Any) -> list:
    items = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise _bad(knob, value, "a JSON list of integers ([0,5,10]) or ';'-separated integers (0;5;10)")
        else:
            items = [t for t in text.replace(";", " ").split() if t]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]  # a single index given as `tango_sink_positions=5` arrives as an int
    if not isinstance(items, (list, tuple)):
        raise _bad(knob, value, "a list of integers ([0,5,10] or 0;5;10)")
    try:
        return [_parse_int(knob, v) for v in items]
    except ValueError:
        raise _bad(knob, value, "a list of integers ([0,5,10] or 0;5;10)") from None


def _parse_str(knob: str, value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a command line gave text that happened to look like a number
    raise _bad(knob, value, "a string")


def _unwrap_optional(tp: Any) -> Tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), type(None) in typing.get_args(tp)
    return tp, False


def parse_field(knob: str, field_name: str, value: Any) -> Any:
    """`value` (typed or text) converted to the type of `TangoConfig.<field_name>`; `knob` names it in errors."""
    tp, optional = _unwrap_optional(_field_types()[field_name])
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional:
            return None
        raise _bad(knob, value, f"a value ({field_name} is not optional)")
    if tp is bool:
        return parse_bool(knob, value)
    if tp is int:
        return _parse_int(knob, value)
    if tp is float:
        return _parse_float(knob, value)
    if tp is list or typing.get_origin(tp) is list:
        return _parse_int_list(knob, value)
    if tp is str:
        return _parse_str(knob, value)
    if (tp is dict or typing.get_origin(tp) is dict) and isinstance(value, str):
        # strategy_options from a command line: a JSON object, e.g. tango_strategy_options={"seed":3}
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _bad(knob, value, 'a JSON object, e.g. {"seed": 3}') from None
    return value  # TangoConfig validates the rest


def _parse_option(knob: str, name: str, value: Any) -> Any:
    choices = ENABLE_OPTIONS[name]
    if choices is None:  # fps
        number = _parse_float(knob, value)
        if not math.isfinite(number) or number <= 0:
            raise _bad(knob, value, "a number > 0")
        return number
    text = _parse_str(knob, value)
    if text not in choices:
        raise _bad(knob, value, "one of " + ", ".join(repr(c) for c in choices))
    return text


#: the key of the knobs section in a model folder's config.json (and the attribute on `model.config`)
SECTION = "tango"


# ------------------------------------------------------------------------------------------------ mapping
def knobs_from_config(config: TangoConfig, options: Dict[str, Any]) -> Dict[str, Any]:
    """The knobs (the `tango` section of config.json) for a config and the enable options; options that
    are not plain JSON values (e.g. a `video_timestamps` tensor, which belongs to one video anyway) are left out."""
    section = {f"tango_{k}": v for k, v in config.to_dict().items()}
    for name, value in options.items():
        if name in ENABLE_OPTIONS and isinstance(value, (str, int, float, bool)):
            section[f"tango_{name}"] = value
    return section



def config_from_knobs(knobs: Mapping[str, Any], *, default_preset: Optional[str] = None,
                      default_on: bool = True) -> Tuple[TangoConfig, Dict[str, Any], Dict[str, Any]]:
    """Build the `TangoConfig`, the `enable` options and the integration extras from `tango*` knobs.

    Args:
        knobs: `tango` / `tango_*` names and values (typed or text), e.g. the first half of `split_knobs`.
        default_preset: preset used when no `tango_preset` knob is given (None: `TangoConfig` defaults).
        default_on: the value of `tango` when the knob is absent.

    Returns:
        `(config, enable_options, extras)`; `extras` holds `enabled` (bool), `report` and `capture` (paths or
        None).
        The config is built and validated also when `tango=false`, so a typo is an error either way.

    Raises:
        ValueError: an unknown knob (the message lists the allowed names), a value of the wrong type or out of
            range (naming the knob and its value), an unknown preset, or the same field given twice
            (`tango_ratio` and `tango_retention_ratio`).
    """
    fields = {f.name for f in dataclasses.fields(TangoConfig)}
    values: Dict[str, Any] = {}
    given_as: Dict[str, str] = {}
    options: Dict[str, Any] = {}
    extras: Dict[str, Any] = {"enabled": default_on, "report": None, "capture": None}
    preset = default_preset
    for knob, value in knobs.items():
        if knob == SWITCH:
            extras["enabled"] = parse_bool(knob, value)
            continue
        if not knob.startswith(PREFIX):
            raise ValueError(f"{knob}={value!r} is not a tango knob; tango knobs are 'tango' and 'tango_*': "
                             f"{', '.join(allowed_knobs())}")
        name = knob[len(PREFIX):]
        if knob == "tango_preset":
            preset = _parse_str(knob, value)
            known = list_presets()
            if preset not in known:
                raise _bad(knob, value, "one of " + ", ".join(known))
        elif knob in ALIASES or name in fields:
            field_name = ALIASES.get(knob, name)
            if field_name in given_as:
                raise ValueError(f"{knob}={value!r}: {field_name} was already given as {given_as[field_name]}; "
                                 "give it once")
            values[field_name] = parse_field(knob, field_name, value)
            given_as[field_name] = knob
        elif name in ENABLE_OPTIONS:
            options[name] = _parse_option(knob, name, value)
        elif name in EXTRAS:
            path = _parse_str(knob, value)
            if not path:
                raise _bad(knob, value, "a file path")
            extras[name] = path
        else:
            raise ValueError(f"unknown tango knob {knob}={value!r}; allowed: {', '.join(allowed_knobs())}")
    try:
        if preset is not None:
            data = dict(get_preset(preset))
            data.update(values)
            config = TangoConfig.from_dict(data)
        else:
            config = TangoConfig(**values)
    except ValueError as err:
        # TangoConfig names the field; say which knob gave it
        culprit = next((k for f, k in given_as.items() if str(err).startswith(f + "=")), None)
        if culprit is None:
            raise
        raise ValueError(f"{culprit}: {err}") from None
    return config, options, extras


__all__ = ["SWITCH", "PREFIX", "ALIASES", "ENABLE_OPTIONS", "register_enable_option", "EXTRAS", "allowed_knobs",
           "is_knob", "split_knobs", "knobs_help", "parse_bool", "parse_field", "config_from_knobs",
           "knobs_from_config", "SECTION"]
