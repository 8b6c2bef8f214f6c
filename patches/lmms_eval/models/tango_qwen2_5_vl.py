"""`tango_qwen2_5_vl`: lmms-eval's `qwen2_5_vl` wrappers (chat, the default, and simple) with Tango pruning.

The simple wrapper re-samples the first video of a batch after qwen-vl-utils and calls the processor without
metadata, so the model's own `second_per_grid_ts` comes from the processor's 24-fps default; the engine is given the
seconds of the frames really kept instead (the report shows both).
"""

from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as Qwen2_5_VLChat
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL

from ..session import TangoLmmsMixin


class TangoQwen2_5_VL(TangoLmmsMixin, Qwen2_5_VL):
    """`qwen2_5_vl` (simple) plus the `tango_*` knobs in `--model_args`."""

    tango_model_name = "tango_qwen2_5_vl"


class TangoQwen2_5_VLChat(TangoLmmsMixin, Qwen2_5_VLChat):
    """`qwen2_5_vl` (chat) plus the `tango_*` knobs in `--model_args`."""

    tango_model_name = "tango_qwen2_5_vl"
