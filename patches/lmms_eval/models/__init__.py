"""Model modules of the lmms-eval plugin, one per model name.

`AVAILABLE_MODELS` serves lmms-eval's deprecated `LMMS_EVAL_PLUGINS` route, which imports
`<plugin>.models.<name>.<class>`; the entry points (`tango_plugin.patches.lmms_eval.manifests`) are the supported one.
"""

AVAILABLE_MODELS = {
    "tango_qwen2_vl": "TangoQwen2VL",
    "tango_qwen2_5_vl": "TangoQwen2_5_VL",
    "tango_qwen3_vl": "TangoQwen3VL",
    "tango_llava_hf": "TangoLlavaHf",
    "tango_llava_onevision": "TangoLlavaOneVision",
    "tango_llava_vid": "TangoLlavaVid",
}
