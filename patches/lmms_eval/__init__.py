"""lmms-eval plugin: Tango pruning in lmms-eval's own Hugging Face wrappers.

Model names (registered through lmms-eval's `lmms_eval.models` entry-point group, see `manifests`):

| name               | lmms-eval wrapper it extends     | video path traced for frame times                    |
| ------------------ | -------------------------------- | ---------------------------------------------------- |
| `tango_qwen2_vl`   | `qwen2_vl` (simple)              | qwen-vl-utils `process_vision_info` + re-sampling    |
| `tango_qwen2_5_vl` | `qwen2_5_vl` (chat and simple)   | qwen-vl-utils `process_vision_info` + re-sampling    |
| `tango_qwen3_vl`   | `qwen3_vl` (chat and simple)     | qwen-vl-utils `process_vision_info` (with metadata)  |
| `tango_llava_hf`   | `llava_hf` (simple)              | decord `VideoReader.get_batch` in `load_video`       |
| `tango_llava_onevision` | `llava_onevision` (simple; `llava`) | decord `VideoReader.get_batch` in `load_video`  |
| `tango_llava_vid`  | `llava_vid` (simple; `llava`)    | decord `VideoReader.get_batch` in `load_video`       |

The two `llava` models need LLaVA-NeXT's `llava` package (not on PyPI). They are registered everywhere; where `llava`
cannot be imported their modules still import and the model fails at start saying so (`unavailable_models()`).

Knobs go in `--model_args` next to the wrapper's own arguments (`tango_ratio=0.25,tango_report=out.json`, see
`tango_plugin.knobs`); they are removed before the wrapper's constructor runs. Importing this package is cheap: it
imports lmms-eval's registry only when lmms-eval calls `manifests()`, and the wrappers only when a model is built.
"""

from __future__ import annotations

_MODELS_PKG = "tango_plugin.patches.lmms_eval.models"

#: model name -> (simple class path, chat class path or None); the same split as lmms-eval's own wrappers
MODELS = {
    "tango_qwen2_vl": (f"{_MODELS_PKG}.tango_qwen2_vl.TangoQwen2VL", None),
    "tango_qwen2_5_vl": (f"{_MODELS_PKG}.tango_qwen2_5_vl.TangoQwen2_5_VL",
                         f"{_MODELS_PKG}.tango_qwen2_5_vl.TangoQwen2_5_VLChat"),
    "tango_qwen3_vl": (f"{_MODELS_PKG}.tango_qwen3_vl.TangoQwen3VL", f"{_MODELS_PKG}.tango_qwen3_vl.TangoQwen3VLChat"),
    # lmms-eval's `llava_hf` chat wrapper hands video paths to the processor, which samples frames out of sight;
    # only the simple wrapper (frames decoded in `load_video`) is extended, so the name resolves to it.
    "tango_llava_hf": (f"{_MODELS_PKG}.tango_llava_hf.TangoLlavaHf", None),
    # lmms-eval's wrappers of LLaVA-NeXT's own `llava` package (simple only, as lmms-eval's)
    "tango_llava_onevision": (f"{_MODELS_PKG}.tango_llava_onevision.TangoLlavaOneVision", None),
    "tango_llava_vid": (f"{_MODELS_PKG}.tango_llava_vid.TangoLlavaVid", None),
}

#: the model names that need LLaVA-NeXT's `llava` package
LLAVA_MODELS = ("tango_llava_onevision", "tango_llava_vid")


def llava_missing() -> str:
    """Why LLaVA-NeXT's `llava` (its `llava_qwen` model) cannot be used here, or "" when it can."""
    try:
        import llava  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
        return (f"LLaVA-NeXT's `llava` package is not importable ({type(exc).__name__}: {exc}); it is not on PyPI "
                "and needs transformers 4.45-4.55: install LLaVA-NeXT in this environment (docs/llava_next.md)")
    try:  # llava's own __init__ swallows the import errors of its models
        from llava.model.language_model.llava_qwen import LlavaQwenForCausalLM  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return (f"LLaVA-NeXT's `llava` is installed but its llava_qwen model does not import ({type(exc).__name__}: "
                f"{exc}); it needs transformers 4.45-4.55 (docs/llava_next.md)")
    return ""


def unavailable_models() -> dict:
    """Model name -> why it cannot run in this environment (empty when every Tango model can)."""
    missing = llava_missing()
    return {name: missing for name in LLAVA_MODELS} if missing else {}


def manifests():
    """The `lmms_eval.models` entry point: one `ModelManifest` per Tango model name.

    lmms-eval 0.7 loads every entry point of that group when `lmms_eval.models` is imported and accepts a manifest,
    an iterable of manifests or a callable returning either; a callable keeps this import free of lmms-eval.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, simple_class_path=simple, chat_class_path=chat)
            for name, (simple, chat) in MODELS.items()]


__all__ = ["MODELS", "LLAVA_MODELS", "manifests", "llava_missing", "unavailable_models"]
