"""`tango_qwen3_vl`: lmms-eval's `qwen3_vl` wrappers (chat, the default, and simple) with Tango pruning.

Qwen3-VL's processor writes the frame times into the prompt text only; the engine gets the same seconds (frame index
/ video fps from qwen-vl-utils' metadata) per call. The simple wrapper decodes the next batch in a worker thread:
the times travel with each batch's processor output, so they cannot be mixed up between batches.
"""

from lmms_eval.models.chat.qwen3_vl import Qwen3_VL as Qwen3_VLChat
from lmms_eval.models.simple.qwen3_vl import Qwen3_VL

from ..session import TangoLmmsMixin


class TangoQwen3VL(TangoLmmsMixin, Qwen3_VL):
    """`qwen3_vl` (simple) plus the `tango_*` knobs in `--model_args`."""

    tango_model_name = "tango_qwen3_vl"


class TangoQwen3VLChat(TangoLmmsMixin, Qwen3_VLChat):
    """`qwen3_vl` (chat) plus the `tango_*` knobs in `--model_args`."""

    tango_model_name = "tango_qwen3_vl"
