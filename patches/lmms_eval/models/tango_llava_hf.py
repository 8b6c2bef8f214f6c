"""`tango_llava_hf`: lmms-eval's `llava_hf` wrapper (simple) with Tango pruning, for LLaVA-OneVision checkpoints.

The wrapper decodes `max_frames_num` evenly spaced frames with decord in `load_video`; the indices of that
`get_batch` call and the file's fps give the engine each frame's time. Batch size 1 only (the wrapper's own limit).
LLaVA-Video-style checkpoints: `tango_pool_mode=average,tango_newline=grid` (and `tango_preset=llava-video`).
"""

from lmms_eval.models.simple.llava_hf import LlavaHf

from ..session import TangoLmmsMixin, VideoFrames


class TangoLlavaHf(TangoLmmsMixin, LlavaHf):
    """`llava_hf` plus the `tango_*` knobs in `--model_args`."""

    tango_model_name = "tango_llava_hf"
    tango_processor_attr = "_image_processor"

    def load_video(self, video_path, max_frames_num):
        book = self._tango.book
        book.start_decodes()
        frames = super().load_video(video_path, max_frames_num)
        decodes = book.take_decodes()
        # exactly one decode of exactly these frames: anything else is left to frame-by-frame matching
        if len(decodes) == 1 and len(decodes[0].frame_indices) == len(frames):
            decoded: VideoFrames = decodes[0]
            book.add(frames, decoded)
        return frames
