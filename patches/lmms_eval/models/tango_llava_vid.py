"""`tango_llava_vid`: lmms-eval's `llava_vid` wrapper (simple) with Tango pruning, on LLaVA-NeXT's own `llava`
package (LLaVA-Video checkpoints; the adapter is `model_zoo/llava_next.py`).

The wrapper's `load_video` samples one frame every `round(file fps / video_fps)` (or `max_frames_num` evenly spaced
ones with `force_sample`, or when there are more) and writes rounded times into the prompt only; in the first branch
its times are frame index / step, seconds only with `video_fps=1`. The engine gets none of them: the decord
`VideoReader` of the wrapper's module records the indices of its `get_batch` call, and the engine gets `frame index /
file fps` of exactly those frames. The wrapper's prompt is left as the wrapper writes it.

`llava_vid` imports `llava` at module level. Without `llava` this module still imports: `TangoLlavaVid` is then a
stand-in that fails at start with a message saying what is missing (`unavailable_models()` lists it).
"""

from .. import llava_missing
from ..session import LlavaFrames, TangoLmmsMixin

_MISSING = llava_missing()

if not _MISSING:
    from lmms_eval.models.simple.llava_vid import LlavaVid

    class TangoLlavaVid(LlavaFrames, TangoLmmsMixin, LlavaVid):
        """`llava_vid` plus the `tango_*` knobs in `--model_args`."""

        tango_model_name = "tango_llava_vid"

else:
    from lmms_eval.api.model import lmms

    class TangoLlavaVid(lmms):
        """Stand-in for `tango_llava_vid` where `llava` cannot be imported: fails at start, saying why."""

        tango_model_name = "tango_llava_vid"

        def __init__(self, **kwargs) -> None:
            raise ImportError(f"{self.tango_model_name}: {_MISSING}")

        def generate_until(self, requests):  # pragma: no cover - never constructed
            raise NotImplementedError

        def loglikelihood(self, requests):  # pragma: no cover
            raise NotImplementedError

        def generate_until_multi_round(self, requests):  # pragma: no cover
            raise NotImplementedError
