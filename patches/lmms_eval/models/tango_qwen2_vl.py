"""`tango_qwen2_vl`: lmms-eval's `qwen2_vl` wrapper with Tango pruning.

The wrapper decodes with qwen-vl-utils (2 fps by default) and then keeps `unique(linspace(0, n - 1,
max_num_frames))` of the first video of a batch; the frame times the engine gets are those of the frames kept.
"""

from lmms_eval.models.simple.qwen2_vl import Qwen2_VL

from ..session import TangoLmmsMixin


class TangoQwen2VL(TangoLmmsMixin, Qwen2_VL):
    """`qwen2_vl` plus the `tango_*` knobs of `tango_plugin.knobs` in `--model_args`."""

    tango_model_name = "tango_qwen2_vl"
