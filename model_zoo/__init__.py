"""The built-in model families. Each registers its adapter (lazily, as a ``"module:Class"`` string, so nothing here
imports transformers) and its presets; `import tango_plugin` imports this package, so the core never names a
model family.

- llava_onevision: `llava_onevision.LlavaOnevisionAdapter` (LLaVA-OneVision; LLaVA-Video-style checkpoints through
  its options); presets llava-onevision, llava-video
- qwen2_vl / qwen2_5_vl / qwen3_vl: `qwen_vl.Qwen2VLAdapter` / `Qwen2_5_VLAdapter` / `Qwen3VLAdapter`; presets
  qwen2-vl, qwen2.5-vl, qwen3-vl
"""

from tango_plugin.integration.adapter import register_adapter

from . import (
    llava_onevision_options,  # noqa: F401  (registers LLaVA-OV's adapter options as knobs)
    presets,  # noqa: F401  (registers the presets)
)

register_adapter("llava_onevision", "tango_plugin.model_zoo.llava_onevision:LlavaOnevisionAdapter")
register_adapter("qwen2_vl", "tango_plugin.model_zoo.qwen_vl:Qwen2VLAdapter")
register_adapter("qwen2_5_vl", "tango_plugin.model_zoo.qwen_vl:Qwen2_5_VLAdapter")
register_adapter("qwen3_vl", "tango_plugin.model_zoo.qwen_vl:Qwen3VLAdapter")

#: model types of the built-in families (the test matrix checks each has a tester)
BUILTIN_MODEL_TYPES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
register_adapter("llava_qwen", "tango_plugin.model_zoo.llava_next:LlavaNextAdapter")
# Families written through the public adapter API only (docs/adapters.md); tiny recipes in tango_plugin.testing.
register_adapter("qwen3_vl_moe", "tango_plugin.model_zoo.qwen3_vl_moe:Qwen3VLMoeAdapter")
register_adapter("llava_next_video", "tango_plugin.model_zoo.llava_next_video:LlavaNextVideoAdapter")
register_adapter("glm4v", "tango_plugin.model_zoo.glm4v:Glm4vAdapter")
register_adapter("internvl", "tango_plugin.model_zoo.internvl:InternVLAdapter")
