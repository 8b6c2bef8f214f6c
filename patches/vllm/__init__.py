"""Tango for the vLLM serving engine: an out-of-tree plugin (docs/vllm.md).

`pip install tango-plugin` registers `register()` under vLLM's `vllm.general_plugins` entry point. vLLM calls it in
every process it starts (the front end that tokenizes and processes the media, the engine core, every worker), so it
is cheap, idempotent and imports none of the model code: it names the Tango model classes lazily
(`ModelRegistry.register_model(architecture, "module:Class")`, which replaces vLLM's own class for that
architecture), and vLLM imports them when it loads such a model. A Tango class behaves exactly like vLLM's own class
unless the model's Hugging Face config has an enabled `tango` section (`config.json`, or
`--hf-overrides '{"tango": {...}}'`).

What `register()` changes in vLLM, all of it listed by `applied()`:

- the model classes of `settings.SUPPORTED_ARCHITECTURES` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE,
  LLaVA-OneVision);
- `ModelRegistry.inspect_model_cls` on the registry instance: a model whose config has an enabled `tango` section
  is checked when vLLM resolves its architecture, so an unsupported architecture or a bad knob fails at load with a
  `ValueError` naming what is allowed, instead of serving unpruned;
- on the CPU platform only, `CPUModelRunner.load_model`: vLLM's CPU runner never switches on its multimodal pruning
  path after loading the model (its GPU runner does, `gpu_model_runner.py` after `load_model`), so no pruned model
  (vLLM's own EVS included) gets its M-RoPE positions recomputed there; the wrapper sets the flag exactly as the GPU
  runner does.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import List

from .settings import SUPPORTED_ARCHITECTURES, TESTED_VLLM, section_of, settings_for

log = logging.getLogger("vllm.tango")

#: architecture -> the Tango class vLLM loads for it
MODEL_CLASSES = {
    "Qwen2VLForConditionalGeneration": "tango_plugin.patches.vllm.qwen:TangoQwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "tango_plugin.patches.vllm.qwen:TangoQwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "tango_plugin.patches.vllm.qwen:TangoQwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration": "tango_plugin.patches.vllm.qwen:TangoQwen3VLMoeForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration":
        "tango_plugin.patches.vllm.llava_onevision:TangoLlavaOnevisionForConditionalGeneration",
}
assert set(MODEL_CLASSES) == set(SUPPORTED_ARCHITECTURES)

_applied: List[str] = []


def applied() -> List[str]:
    """What `register()` changed in this process (empty before it ran)."""
    return list(_applied)


def version_note(version: str) -> str:
    """A warning text when `version` is outside the tested range, else ""."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return f"tango: cannot read the vLLM version {version!r}; the plugin is tested with {_tested()}"
    if not TESTED_VLLM[0] <= (major, minor) < TESTED_VLLM[1]:
        return (f"tango: vLLM {version} is outside the tested range ({_tested()}); the plugin subclasses vLLM's "
                "model and processor classes, which change between releases: check its output (docs/vllm.md)")
    return ""


def _tested() -> str:
    (a, b), (c, d) = TESTED_VLLM
    return f">= {a}.{b}, < {c}.{d}"


def register() -> None:
    """The `vllm.general_plugins` entry point: register the Tango model classes and the load-time check (once per
    process)."""
    if _applied:
        return
    import vllm
    from vllm import ModelRegistry

    note = version_note(vllm.__version__)
    if note:
        warnings.warn(note, stacklevel=2)
        log.warning(note)
    for architecture, target in MODEL_CLASSES.items():
        ModelRegistry.register_model(architecture, target)
    _applied.append("model classes: " + ", ".join(sorted(MODEL_CLASSES)))
    _check_at_resolve(ModelRegistry)
    _fix_cpu_runner()


def _check_at_resolve(registry) -> None:
    """Wrap `registry.inspect_model_cls` (on the instance) so that an enabled `tango` section is validated when vLLM
    resolves the model's architecture, in the front-end process, before anything loads."""
    original = registry.inspect_model_cls

    @functools.wraps(original)
    def inspect_model_cls(architectures, model_config, *args, **kwargs):
        info, arch = original(architectures, model_config, *args, **kwargs)
        if section_of(model_config.hf_config) is not None:
            if model_config.model_impl == "transformers":
                arch = f"{arch} (model_impl='transformers')"
            settings_for(arch, model_config.hf_config)  # ValueError: unsupported architecture or bad knob
        return info, arch

    registry.inspect_model_cls = inspect_model_cls
    _applied.append("ModelRegistry.inspect_model_cls (instance): checks an enabled tango section at load")


def _fix_cpu_runner() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    original = CPUModelRunner.load_model
    if getattr(original, "_tango_cpu_fix", False):
        return

    @functools.wraps(original)
    def load_model(self, *args, **kwargs):
        original(self, *args, **kwargs)
        from vllm.model_executor.models.interfaces import supports_multimodal_pruning

        mm_config = self.model_config.multimodal_config
        self.is_multimodal_pruning_enabled = (supports_multimodal_pruning(self.get_model()) and mm_config is not None
                                              and mm_config.is_multimodal_pruning_enabled())

    load_model._tango_cpu_fix = True
    CPUModelRunner.load_model = load_model
    _applied.append("CPUModelRunner.load_model: sets is_multimodal_pruning_enabled after loading, as the GPU runner")


__all__ = ["register", "applied", "version_note", "MODEL_CLASSES"]
