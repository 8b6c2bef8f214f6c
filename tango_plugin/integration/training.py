"""Fine-tuning with pruning in the loop: LoRA aimed at the language model only (docs/training.md).

A bare ``target_modules=["q_proj", "v_proj"]`` also hits the vision tower of LLaVA-style models (SigLIP names its
attention projections the same way), so LoRA would change the features, and with them the saliency and what Tango
keeps. `lora_target_modules` asks the model's adapter where the language model is and returns the exact module
names of the chosen projections inside it.
"""

from __future__ import annotations

import json
import os
from typing import Any, List, Sequence

import torch

from ..knobs import SECTION, config_from_knobs, knobs_from_config
from .adapter import ModelAdapter, get_adapter
from .api import _unwrap, enable, get_handle

#: the file next to a saved PEFT adapter that holds the Tango knobs it was trained with
TANGO_FILE = "tango.json"

DEFAULT_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def _adapter_class(model: Any, adapter: Any) -> type:
    if isinstance(adapter, type) and issubclass(adapter, ModelAdapter):
        return adapter
    if adapter is not None and not isinstance(adapter, str):
        raise ValueError(f"adapter={adapter!r} must be a model_type name or a ModelAdapter subclass")
    model_type = adapter or getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise ValueError(f"{type(model).__name__} has no config.model_type; pass adapter=<model_type or class>")
    return get_adapter(model_type)


def _inside(name: str, prefixes: Sequence[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def lora_target_modules(model: Any, modules: Sequence[str] = DEFAULT_LORA_MODULES, *, projector: bool = False,
                        adapter: Any = None) -> List[str]:
    """Full names of the `nn.Linear` layers called `modules` inside the language model (and, with
    `projector=True`, every linear layer of the vision-to-LLM projector), for `peft.LoraConfig(target_modules=...)`.

    Args:
        model: the transformers (or `llava`) model you will pass to `peft.get_peft_model`, enabled or not.
        modules: leaf names of the projections to adapt, e.g. ``("q_proj", "v_proj")``.
        projector: also adapt the projector (LLaVA: `multi_modal_projector`; Qwen-VL: the merger(s)).
        adapter: a model_type name or `ModelAdapter` class instead of the one registered for `model.config`.

    Returns:
        Sorted module names relative to `model` (peft matches a full name exactly).

    Raises:
        ValueError: `model` is a `PeftModel` already, `modules` is empty or not strings, or a name in `modules`
            matches no linear layer of the language model (the message lists the names there are).
    """
    if model is not _unwrap(model):
        raise ValueError("lora_target_modules wants the model you pass to peft.get_peft_model, not a PeftModel "
                         "(its names carry the base_model.model. prefix and LoRA is already injected)")
    if isinstance(modules, str) or not modules or not all(isinstance(m, str) and m for m in modules):
        raise ValueError(f"modules={modules!r} must be a non-empty list of module leaf names, e.g. ['q_proj', "
                         "'v_proj']")
    cls = _adapter_class(model, adapter)
    llms, vision = cls.language_model_modules(model)
    names = {id(m): n for n, m in model.named_modules()}
    missing = [m for m in [*llms, *vision] if id(m) not in names]
    if missing:
        raise ValueError(f"{cls.__name__}.language_model_modules returned modules that are not part of the model: "
                         f"{[type(m).__name__ for m in missing]}")
    keep = [names[id(m)] for m in llms]
    drop = [names[id(m)] for m in vision]
    linear = [(n, n.rsplit(".", 1)[-1]) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    in_llm = [(n, leaf) for n, leaf in linear if _inside(n, keep) and not _inside(n, drop)]
    targets = [n for n, leaf in in_llm if leaf in set(modules)]
    unknown = sorted(set(modules) - {leaf for _, leaf in in_llm})
    if unknown:
        raise ValueError(f"modules={list(modules)!r}: {unknown} match no linear layer of the language model of this "
                         f"{type(model).__name__}; its linear layers are named {sorted({leaf for _, leaf in in_llm})}")
    if projector:
        proj = [names[id(m)] for m in cls.projector_modules(model) if id(m) in names]
        if not proj:
            raise ValueError(f"projector=True: {cls.__name__} names no projector for {type(model).__name__}")
        targets += [n for n, _ in linear if _inside(n, proj)]
    return sorted(set(targets))


def save_peft_adapter(peft_model: Any, folder: str, **kwargs: Any) -> str:
    """`peft_model.save_pretrained(folder, **kwargs)` plus `folder/tango.json`: the Tango config and enable
    options the model is trained with, so that inference loads the adapter with the pruning it was trained under.

    Raises:
        ValueError: `peft_model` is not a `PeftModel`, or Tango is not enabled on it.
    """
    if peft_model is _unwrap(peft_model):
        raise ValueError(f"save_peft_adapter wants a peft.PeftModel; got {type(peft_model).__name__}")
    handle = get_handle(peft_model)
    if handle is None:
        raise ValueError("Tango is not enabled on this model, so there is no config to save with the adapter; "
                         "call tango_plugin.enable(peft_model, config) first (or use peft_model.save_pretrained)")
    peft_model.save_pretrained(folder, **kwargs)
    with open(os.path.join(folder, TANGO_FILE), "w") as f:
        json.dump({SECTION: knobs_from_config(handle.config, handle.adapter.options)}, f, indent=2, sort_keys=True)
    return folder


def load_peft_adapter(model: Any, folder: str, *, is_trainable: bool = False, enable_tango: bool = True,
                      **kwargs: Any) -> Any:
    """Load a PEFT adapter saved by `save_peft_adapter` onto `model` and switch Tango on as `tango.json` says.

    Args:
        model: the base model (the same weights the adapter was trained on).
        folder: the adapter folder.
        is_trainable: passed to `peft.PeftModel.from_pretrained` (True to go on training).
        enable_tango: False loads the adapter without pruning.
        kwargs: passed to `peft.PeftModel.from_pretrained`.

    Returns:
        the `PeftModel`; `tango_plugin.get_handle(peft_model)` is its handle when pruning is on.

    Raises:
        ValueError: no `tango.json` in `folder`, or a bad knob in it (named, with its value and the allowed ones).
    """
    import peft

    path = os.path.join(folder, TANGO_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{folder}: no {TANGO_FILE} there (save the adapter with tango_plugin.save_peft_adapter, or "
                         "load it with peft.PeftModel.from_pretrained and call tango_plugin.enable yourself)")
    with open(path) as f:
        section = json.load(f).get(SECTION)
    if not isinstance(section, dict):
        raise ValueError(f"{path}: expected an object {{{SECTION!r}: {{tango_* knobs}}}}")
    config, options, extras = config_from_knobs(section)  # bad knobs fail before loading
    peft_model = peft.PeftModel.from_pretrained(model, folder, is_trainable=is_trainable, **kwargs)
    if enable_tango and extras["enabled"]:
        enable(peft_model, config, **options)
    return peft_model


__all__ = ["lora_target_modules", "DEFAULT_LORA_MODULES", "save_peft_adapter", "load_peft_adapter", "TANGO_FILE"]
