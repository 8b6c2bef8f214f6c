"""The config flag: a `tango` section in a model folder's `config.json` turns pruning on when it is loaded.

`enable` writes the section onto `model.config` (an entry of the handle's hook registry, removed with the rest), so
`model.save_pretrained(dir)` of an enabled model saves it like any other config key; `from_pretrained(dir)` loads
the model with transformers and, when the section is there, enables Tango with it. The section holds the same
`tango_*` knobs every integration speaks (`tango_plugin.knobs`):

    "tango": {"tango_retention_ratio": 0.1, "tango_strategy": "tango", ..., "tango_fps": 1.0}

transformers is imported inside `from_pretrained` only.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Dict, Optional

from ..knobs import SECTION, config_from_knobs


def read_section(model_dir: str) -> Optional[Dict[str, Any]]:
    """The `tango` section of `model_dir/config.json`, or None."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{model_dir}: no config.json there (a local checkpoint folder is needed)")
    with open(path) as f:
        data = json.load(f)
    section = data.get(SECTION)
    if section is not None and not isinstance(section, dict):
        raise ValueError(f"{path}: the {SECTION!r} section must be an object of tango_* knobs; got {section!r}")
    return section


def from_pretrained(model_dir: str, *, model_class: Any = None, enable: bool = True, **kwargs: Any):
    """Load a model folder with transformers and switch Tango on as its `config.json` says.

    Args:
        model_dir: a local checkpoint folder.
        model_class: the transformers class to load with (default: `AutoModelForImageTextToText`).
        enable: False loads the model without pruning even when the section is there.
        kwargs: passed to `from_pretrained` (e.g. `dtype=`, `device_map=`, `local_files_only=True`).

    Returns:
        the model; when it was enabled, `tango_plugin.get_handle(model)` is its handle.

    Raises:
        ValueError: a bad knob or value in the section (naming it, its value and the allowed ones), or an
            unsupported model type.
    """
    section = read_section(model_dir)
    parsed = config_from_knobs(section) if section is not None else None  # bad knobs fail before loading
    if model_class is None:
        from transformers import AutoModelForImageTextToText as model_class
    model = model_class.from_pretrained(model_dir, **kwargs)
    if model.config.__dict__.get(SECTION) is not None:
        del model.config.__dict__[SECTION]  # enable() puts it back; removal then leaves a clean config
    if parsed is None:
        if enable:
            warnings.warn(f"tango_plugin: {model_dir}/config.json has no {SECTION!r} section, so the model is "
                          "loaded without pruning; enable it with tango_plugin.enable(model, config)", stacklevel=2)
        return model
    config, options, extras = parsed
    if enable and extras["enabled"]:
        from .api import enable as enable_model

        enable_model(model, config, **options)
    return model


__all__ = ["from_pretrained", "read_section"]
