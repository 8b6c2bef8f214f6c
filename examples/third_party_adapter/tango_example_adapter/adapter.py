"""The adapter, found by tango_plugin through this package's `tango_plugin.adapters` entry point.

It uses only the public adapter API (docs/adapters.md): the model speaks Qwen2-VL's layout (video placeholders
`<|video_pad|>`, `get_video_features`, 3-D M-RoPE `get_rope_index`), so the adapter is the Qwen-VL family's public
adapter class with this family's own settings; a family with another layout subclasses
`tango_plugin.integration.splice.VideoSpliceAdapter` and implements `video_token_id`, `encode_videos` and
`encoder_outputs` itself.
"""

from __future__ import annotations

from tango_plugin.model_zoo.qwen_vl import Qwen2VLAdapter

from . import MODEL_TYPE


class ExampleVLAdapter(Qwen2VLAdapter):
    """`tango_example_vl`: the Qwen2-VL splice (kept tokens keep their 3-D positions), the qwen2-vl preset.

    Its own class (not `Qwen2VLAdapter` itself): registering sets `model_type` on the class it is given.
    """

    preset_name = "qwen2-vl"


__all__ = ["ExampleVLAdapter", "MODEL_TYPE"]
