"""The paper's settings per model family (docs/algorithm.md §1.4 sink positions, §6 the intra-LLM stage)."""

from tango_plugin.presets import register_preset

# Attention-sink grid positions whose saliency the reference zeroes (docs/algorithm.md §1.4).
LLAVA_OV_SINKS = [28, 27, 41, 169, 11, 12]  # on the 14 x 14 pooled grid
LLAVA_VIDEO_SINKS = [26, 157, 11]  # on the 13 x 13 pooled grid

register_preset("llava-onevision", {"retention_ratio": 0.1, "sink_positions": LLAVA_OV_SINKS})
# LLaVA-Video runs prune to 28 r / 23 before the LLM so that, with the intra-LLM stage at layer 18 keeping
# half, the layer-averaged count is r (docs/algorithm.md §6); 0.121739 corresponds to r = 0.1
# (`tango_plugin.pre_llm_retention(0.1, 28, 18, 0.5)`). The intra-LLM stage needs a model deeper than 18 layers.
register_preset("llava-video", {"retention_ratio": 0.121739, "similarity_threshold": 0.65,
                                "sink_positions": LLAVA_VIDEO_SINKS, "intra_llm_layer": 18,
                                "intra_llm_ratio": 0.5})
for _name in ("qwen2-vl", "qwen2.5-vl", "qwen3-vl"):
    register_preset(_name, {"retention_ratio": 0.1, "sink_positions": []})
