"""lmms-eval plugin: Tango pruning in lmms-eval's own Hugging Face wrappers.

Model names (registered through lmms-eval's `lmms_eval.models` entry-point group, see `manifests`):

| name               | lmms-eval wrapper it extends     | video path traced for frame times                    |
| ------------------ | -------------------------------- | ---------------------------------------------------- |
| `tango_qwen2_vl`   | `qwen2_vl` (simple)              | qwen-vl-utils `process_vision_info` + re-sampling    |
| `tango_qwen2_5_vl` | `qwen2_5_vl` (chat and simple)   | qwen-vl-utils `process_vision_info` + re-sampling    |
| `tango_qwen3_vl`   | `qwen3_vl` (chat and simple)     | qwen-vl-utils `process_vision_info` (with metadata)  |
| `tango_llava_hf`   | `llava_hf` (simple)              | decord `VideoReader.get_batch` in `load_video`       |

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
}


def manifests():
    """The `lmms_eval.models` entry point: one `ModelManifest` per Tango model name.

    lmms-eval 0.7 loads every entry point of that group when `lmms_eval.models` is imported and accepts a manifest,
    an iterable of manifests or a callable returning either; a callable keeps this import free of lmms-eval.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, simple_class_path=simple, chat_class_path=chat)
            for name, (simple, chat) in MODELS.items()]


__all__ = ["MODELS", "manifests"]
