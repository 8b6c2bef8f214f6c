"""Frame tracing shared by the harness glue (lmms-eval, VLMEvalKit): which frames of which file each video tensor
holds, from the decoder to the processor, so that the engine gets their exact times (`frame index / video fps`).

The harnesses decode a video in one function and hand the frames to the processor in another, possibly after
re-sampling them. The trace is kept at the two places every video passes through:

1. the decoder: qwen-vl-utils' `process_vision_info` is replaced by `recording_process_vision_info`, which asks
   the real one for the video metadata too and returns what the caller asked for, each video tensor marked with its
   frames (`MarkedFrames`: indexing along the frame axis keeps the mark, so a wrapper's own `video[indices]`
   re-sampling is followed); decord's `VideoReader` is replaced by `recording_video_reader`, whose `get_batch`
   reports the indices it read.
2. the processor: each video it receives is looked up in the `FrameBook` (its mark, else the object itself, else
   frame-by-frame equality with a decoded video, never guessed) and the answer travels with the processor output as
   a `FrameTimes` under `CARRIER_KEY`, which the patched `generate` removes and turns into `tango_video_timestamps=`.

Each harness module decides when to swap the decoders in and what to put in its report; the records and the matching
are here, once.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence

import numpy as np
import torch

#: key of the frame times in the processor output (removed again by the patched generate / forward)
CARRIER_KEY = "tango_frame_times"


@dataclass
class VideoFrames:
    """The frames of one video as the model receives them.

    Args:
        frame_indices: index of each frame in the video file.
        video_fps: the file's average frame rate (the decoder's).
        source: how the frames were decoded (e.g. "qwen-vl-utils/decord", "decord VideoReader").
        path: the video file, when known.
        traced: how the processor's input was matched to the decoded frames ("marked", "same object",
            "equal frames").
    """

    frame_indices: List[int]
    video_fps: float
    source: str
    path: Optional[str] = None
    traced: str = ""
    #: which decoding these frames come from (set by `FrameBook.add`, kept by `select`)
    origin: int = 0

    @property
    def frame_times(self) -> List[float]:
        return [i / self.video_fps for i in self.frame_indices]

    def select(self, positions: Sequence[int]) -> "VideoFrames":
        return VideoFrames([self.frame_indices[p] for p in positions], self.video_fps, self.source, self.path,
                           origin=self.origin)

    def traced_as(self, how: str) -> "VideoFrames":
        return VideoFrames(list(self.frame_indices), self.video_fps, self.source, self.path, how, self.origin)


def frames_from_metadata(meta: Any, source: str, path: Optional[str] = None) -> Optional[VideoFrames]:
    """`VideoFrames` from video metadata (a mapping or transformers' `VideoMetadata`: `frames_indices`, `fps`,
    optional `video_backend`), or None when it lacks the indices or the fps."""
    get = meta.get if isinstance(meta, Mapping) else (lambda k, d=None: getattr(meta, k, d))
    indices, fps = get("frames_indices"), get("fps")
    if indices is None or not fps:
        return None
    backend = get("video_backend")
    return VideoFrames([int(i) for i in list(indices)], float(fps), f"{source}/{backend}" if backend else source,
                       path)


# ----------------------------------------------------------------------------------------------- marks
class MarkedFrames(torch.Tensor):
    """A decoded video tensor that knows its frames (`tango_frames`); indexing along the frame axis keeps the mark.

    Every other operation returns a plain tensor, so a mark is never wrong: at worst it is lost, and the processor
    wrapper then matches frames by identity or equality.
    """

    tango_frames: Optional[VideoFrames] = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():  # plain results (the documented subclass recipe)
            out = func(*args, **kwargs)
        if func is torch.Tensor.__getitem__ and isinstance(out, torch.Tensor) and isinstance(args[0], cls):
            source, key = args[0], args[1]
            first = key[0] if isinstance(key, tuple) and key else key
            if first is Ellipsis or source.tango_frames is None:
                return out
            try:
                positions = np.arange(source.shape[0])[np.asarray(first) if isinstance(first, torch.Tensor)
                                                       else first]
            except (IndexError, TypeError, ValueError):
                return out
            if positions.ndim == 1 and out.ndim == source.ndim and positions.shape[0] == out.shape[0]:
                return mark(out, source.tango_frames.select(positions.tolist()))
        return out


def mark(video: torch.Tensor, frames: VideoFrames) -> MarkedFrames:
    marked = video.as_subclass(MarkedFrames)
    marked.tango_frames = frames
    return marked


def unmark(video: Any) -> Any:
    return video.as_subclass(torch.Tensor) if isinstance(video, MarkedFrames) else video


# ----------------------------------------------------------------------------------------------- the book
AMBIGUOUS = "ambiguous"


class FrameBook:
    """Decoded videos waiting for the processor.

    Thread-safe (lmms-eval's `qwen3_vl` decodes the next batch in a worker thread). An entry is dropped once the
    processor got its video, and at most `keep` wait, so decoded videos are not held for the whole run.
    """

    def __init__(self, keep: int = 32) -> None:
        self._lock = threading.Lock()
        self._entries: List[tuple] = []  # (decoded video, VideoFrames)
        self._keep = keep
        self._next_origin = 0
        self._pending = threading.local()

    def add(self, video: Any, frames: VideoFrames) -> None:
        with self._lock:
            if not frames.origin:
                self._next_origin += 1
                frames.origin = self._next_origin
            self._entries.append((video, frames))
            del self._entries[:-self._keep]

    def __len__(self) -> int:
        return len(self._entries)

    def _used(self, frames: VideoFrames) -> VideoFrames:
        with self._lock:
            self._entries = [e for e in self._entries if e[1].origin != frames.origin]
        return frames

    # decord reads seen while one decoding function runs (per thread)
    def start_decodes(self) -> None:
        self._pending.calls = []

    def note_decode(self, frames: VideoFrames) -> None:
        calls = getattr(self._pending, "calls", None)
        if calls is not None:
            calls.append(frames)

    def take_decodes(self) -> List[VideoFrames]:
        calls, self._pending.calls = getattr(self._pending, "calls", None) or [], None
        return calls

    def resolve(self, video: Any) -> Optional[VideoFrames]:
        """The frames of `video` as given to the processor, or None when they cannot be traced."""
        if isinstance(video, MarkedFrames) and video.tango_frames is not None:
            return self._used(video.tango_frames.traced_as("marked"))
        with self._lock:
            entries = list(self._entries)
        for decoded, frames in reversed(entries):
            if decoded is video:
                return self._used(frames.traced_as("same object"))
        # frame-by-frame equality: only an answer that no other decoded video contradicts
        answers: dict = {}
        for decoded, frames in entries:
            positions = _match_frames(decoded, video)
            if positions is AMBIGUOUS:
                return None
            if positions is not None:
                picked = frames.select(positions)
                answers[(tuple(picked.frame_indices), picked.video_fps, picked.source, picked.path)] = picked
        if len(answers) != 1:
            return None
        return self._used(answers.popitem()[1].traced_as("equal frames"))


def _as_array(video: Any) -> Optional[np.ndarray]:
    if isinstance(video, torch.Tensor):
        return unmark(video).detach().cpu().numpy()
    if isinstance(video, np.ndarray):
        return video
    return None


def _match_frames(decoded: Any, video: Any):
    """Positions in `decoded` of the frames of `video` when each frame equals exactly one decoded frame and the
    positions increase (a re-sampling); `AMBIGUOUS` when a frame equals several decoded frames (never guessed);
    None when `video` is not drawn from `decoded`."""
    a, b = _as_array(decoded), _as_array(video)
    if a is None or b is None or a.ndim != b.ndim or a.ndim < 2 or a.shape[1:] != b.shape[1:]:
        return None
    flat_a, flat_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    positions: List[int] = []
    for frame in flat_b:
        hits = np.flatnonzero((flat_a == frame).all(axis=1))
        if hits.size > 1:
            return AMBIGUOUS
        if hits.size == 0 or (positions and hits[0] <= positions[-1]):
            return None
        positions.append(int(hits[0]))
    return positions


# ----------------------------------------------------------------------------------------------- the carrier
@dataclass
class FrameTimes:
    """What the processor wrapper learnt about one call's videos, carried to `generate` in the processor output.

    Not a tensor, list or dict, so `BatchFeature.to(device, dtype)` leaves it as it is.
    """

    videos: List[Optional[VideoFrames]]
    second_per_grid_ts: Optional[List[float]] = None
    #: set when the times were handed to the engine as `tango_video_timestamps`
    passed: bool = False

    @property
    def complete(self) -> bool:
        return bool(self.videos) and all(v is not None for v in self.videos)

    def timestamps(self) -> List[torch.Tensor]:
        return [torch.tensor(v.frame_times, dtype=torch.float64) for v in self.videos]


# ----------------------------------------------------------------------------------------------- the decoders
def recording_process_vision_info(real, book: FrameBook):
    """`real` (qwen-vl-utils' `process_vision_info`) that also marks each video with its frames and adds it to
    `book`; returns exactly what the caller asked for."""

    @functools.wraps(real)
    def process_vision_info(conversations, return_video_kwargs=False, return_video_metadata=False, **kwargs):
        images, videos, video_kwargs = real(conversations, return_video_kwargs=True, return_video_metadata=True,
                                            **kwargs)
        paths = [ele.get("video") for ele in _vision_elements(conversations) if "video" in ele]
        out, sample_fps = [], []
        for k, (video, meta) in enumerate(videos or []):
            path = paths[k] if k < len(paths) and isinstance(paths[k], str) else None
            if path is not None and path.startswith("file://"):
                path = path[len("file://"):]
            # qwen-vl-utils gives a frame list made-up metadata (its `sample_fps`, 2 by default): not a file's fps
            source = "qwen-vl-utils" if meta.get("video_backend") else "qwen-vl-utils frame list (fps assumed)"
            frames = frames_from_metadata(meta, source, path)
            marked = mark(video, frames) if isinstance(video, torch.Tensor) and frames is not None else video
            if frames is not None:
                book.add(marked, frames)
            out.append((marked, meta) if return_video_metadata else marked)
            # the `fps` qwen-vl-utils returns without metadata: sampled frames per second of video
            total = meta.get("total_num_frames") or len(meta["frames_indices"])
            sample_fps.append(len(meta["frames_indices"]) / max(float(total), 1e-6) * float(meta["fps"]))
        if not return_video_metadata and videos:
            video_kwargs = {**video_kwargs, "fps": sample_fps}
        result = (images, out or None)
        return result + (video_kwargs,) if return_video_kwargs else result

    process_vision_info.tango_recorder = True
    return process_vision_info


def _vision_elements(conversations) -> list:
    try:
        from qwen_vl_utils import extract_vision_info

        return extract_vision_info(conversations)
    except Exception:  # only used for the file names in the report
        return []


def recording_video_reader(real_cls, note: Callable[[VideoFrames], None]):
    """A subclass of decord's `VideoReader` whose `get_batch` calls `note` with the indices it read and the file's
    fps."""

    class RecordingVideoReader(real_cls):
        def __init__(self, uri, *args, **kwargs):
            super().__init__(uri, *args, **kwargs)
            self._tango_uri = uri[0] if isinstance(uri, (list, tuple)) else uri

        def get_batch(self, indices):
            out = super().get_batch(indices)
            note(VideoFrames([int(i) for i in np.asarray(indices).ravel()], float(self.get_avg_fps()),
                             "decord VideoReader", str(self._tango_uri)))
            return out

    RecordingVideoReader.__name__ = real_cls.__name__
    RecordingVideoReader.tango_recorder = True
    return RecordingVideoReader


__all__ = ["CARRIER_KEY", "VideoFrames", "frames_from_metadata", "MarkedFrames", "mark", "unmark", "FrameBook",
           "FrameTimes", "recording_process_vision_info", "recording_video_reader"]
