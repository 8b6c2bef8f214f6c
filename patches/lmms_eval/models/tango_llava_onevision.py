"""`tango_llava_onevision`: lmms-eval's `llava_onevision` wrapper (simple) with Tango pruning, on LLaVA-NeXT's own
`llava` package (`load_pretrained_model`, `LlavaQwenForCausalLM`; the adapter is `model_zoo/llava_next.py`).

The wrapper decodes `max_frames_num` evenly spaced frames with decord in `load_video` and drops their indices; the
decord `VideoReader` of its module records them while the wrapper evaluates, so the engine gets `frame index / file
fps` of exactly the frames the model sees. Batch size 1 only (the wrapper's own limit). The wrapper sets
`mm_spatial_pool_mode` (default `bilinear`) in the model config; the adapter follows it.

`llava` is not on PyPI: without it this module still imports, and the model fails at start with a message saying
what is missing (`tango_plugin.patches.lmms_eval.unavailable_models()` lists it).
"""

from lmms_eval.models.simple.llava_onevision import Llava_OneVision

from .. import llava_missing
from ..session import LlavaFrames, TangoLmmsMixin


class TangoLlavaOneVision(LlavaFrames, TangoLmmsMixin, Llava_OneVision):
    """`llava_onevision` plus the `tango_*` knobs in `--model_args`."""

    tango_model_name = "tango_llava_onevision"

    def __init__(self, **kwargs) -> None:
        missing = llava_missing()
        if missing:
            raise ImportError(f"{self.tango_model_name}: {missing}")
        super().__init__(**kwargs)
