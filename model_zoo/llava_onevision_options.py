"""LLaVA-OneVision's adapter options and their values, registered as knobs when `tango_plugin` is imported (so
`tango_pool_mode=average` is checked in lmms-eval, VLMEvalKit, vLLM and config.json sections before any model
loads) without importing the adapter itself. `llava_onevision.LlavaOnevisionAdapter` validates against the same
tuples."""

from tango_plugin.knobs import register_enable_option

#: how frames are pooled to the LLM's grid: "bilinear" (HF LLaVA-OV) or "average" (LLaVA-Video: avg_pool2d 2, floor)
POOL_MODES = ("bilinear", "average")
#: "one_token" (one newline per video) or "grid" (LLaVA-Video: one after each row that kept a token)
NEWLINE_MODES = ("one_token", "grid")
#: with prune_images: "keep" (high-res crops pass through) or "prune" (pruned as a second frame)
HIGHRES_MODES = ("keep", "prune")

register_enable_option("pool_mode", POOL_MODES)
register_enable_option("newline", NEWLINE_MODES)
register_enable_option("image_highres", HIGHRES_MODES)
