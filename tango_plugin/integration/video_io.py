"""Reading video files into sampled frames with their exact times (shared by the CLI and the integrations).

Frame k of the sampled set is at ``indices[k] / fps`` seconds: the times ST-RoPE needs (docs/algorithm.md §3).
Decoding goes through `transformers.video_utils.load_video` (decord when installed, else PyAV); transformers and
the decoders are imported inside the functions (the `hf` and `video` extras).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class SampledVideo:
    """Frames sampled from a video file.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB frames.
        indices: (T,) indices of the sampled frames among the video's frames.
        fps: average frame rate of the stream.
        total_frames: number of frames of the video (as the loader counts them).
        timestamps: (T,) seconds of the sampled frames, indices / fps.
        metadata: the transformers `VideoMetadata` of the sampled frames (`frames_indices`, `fps`, size, backend):
            what the processors and `generate(..., tango_video_timestamps=...)` take.
        backend: the decoder that read the file ("decord", "pyav", ...).
    """

    frames: np.ndarray
    indices: np.ndarray
    fps: float
    total_frames: int
    timestamps: torch.Tensor
    metadata: Any = None
    backend: str = ""


#: the decoders `read_video` can use, in the order "auto" tries them (transformers.video_utils backends)
VIDEO_BACKENDS = ("decord", "pyav", "opencv", "torchcodec")


def uniform_indices(total: int, num_frames: int) -> np.ndarray:
    """`np.linspace(0, total - 1, num_frames)` rounded down, duplicates dropped (lmms-eval / VLMEvalKit uniform
    sampling); all frames when the video has fewer than `num_frames`."""
    return np.unique(np.linspace(0, total - 1, min(num_frames, total)).astype(np.int64))


def _available(backend: str) -> bool:
    from transformers.utils import import_utils as iu

    return {"decord": iu.is_decord_available, "pyav": iu.is_av_available, "opencv": iu.is_cv2_available,
            "torchcodec": iu.is_torchcodec_available}[backend]()


def choose_backend(backend: str = "auto") -> str:
    """The decoder to use: `backend` itself (it must be installed), or for "auto" decord when installed, else
    PyAV (torchcodec, which needs a system FFmpeg, only when named)."""
    if backend != "auto":
        if backend not in VIDEO_BACKENDS:
            raise ValueError(f"video backend {backend!r} is not known; expected auto or one of "
                             f"{', '.join(VIDEO_BACKENDS)}")
        if not _available(backend):
            raise ImportError(f"video backend {backend!r} is not installed: pip install "
                              f"{ {'pyav': 'av', 'opencv': 'opencv-python'}.get(backend, backend)} "
                              "(or use the default backend, auto)")
        return backend
    for name in ("decord", "pyav"):
        if _available(name):
            return name
    raise ImportError("reading video files needs decord or PyAV: pip install -e \".[hf,video]\" "
                      "(or pip install 'tango-plugin[hf,video]')")


def _probe(path: str, label: str) -> None:
    """With PyAV installed: refuse a file that is not a media file or has no video stream, naming what it has."""
    try:
        import av
    except ImportError:
        return
    try:
        with av.open(path) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise ValueError(f"{label} {path}: the file has no video stream (its streams: {', '.join(kinds)}); "
                                 "give a file with a video track")
    except av.error.FFmpegError as exc:
        raise ValueError(f"{label} {path}: not a readable video file ({exc}); give a video file FFmpeg can "
                         "read (mp4, mkv, webm, avi, ...)") from exc


def read_video(path: str, num_frames: int, label: str = "video", backend: str = "auto") -> SampledVideo:
    """Sample `num_frames` frames uniformly from the video file `path` with transformers' video loader.

    The frames are read by `transformers.video_utils.load_video` with a maintained decoder (`backend`: "auto" is
    decord when installed, else PyAV); the indices are `np.linspace(0, n - 1, num_frames)` rounded down over the
    video's `n` frames (lmms-eval / VLMEvalKit), fewer when the video has fewer frames. Frame k is at
    `indices[k] / fps` seconds (`metadata.timestamps`).

    Args:
        path: the video file.
        num_frames: frames to sample (>= 1).
        label: how errors name the file (the CLI says "--video").
        backend: "auto" or one of `VIDEO_BACKENDS`.

    Raises:
        ValueError: the file is missing, not a video, has no video stream, no frames or no frame rate (the
            message names the file and what to do).
        ImportError: no decoder (or transformers) is installed (the `hf` and `video` extras).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: at least 1 frame is needed")
    if not os.path.isfile(path):
        raise ValueError(f"{label} {path}: no such file; give the path of a video file (mp4, mkv, webm, ...)")
    try:
        from transformers.video_utils import load_video
    except ImportError as exc:
        raise ImportError("reading video files needs transformers: pip install -e \".[hf,video]\"") from exc
    name = choose_backend(backend)
    _probe(path, label)
    frames, metadata, seen = _decode(load_video, path, num_frames, name, label)
    fps = seen.get("fps", 0.0)
    if not 0 < fps < float("inf"):
        raise ValueError(f"{label} {path}: the stream has no frame rate, so frame times are unknown")
    indices = np.asarray(metadata.frames_indices, dtype=np.int64)
    if frames is None or len(frames) != len(indices):
        got = 0 if frames is None else len(frames)
        raise ValueError(f"{label} {path}: {got} frames were decoded for the {len(indices)} sampled indices "
                         f"{indices.tolist()} (the file is damaged or its header frame count is wrong; try "
                         "another backend)")
    metadata.frames_indices = indices.tolist()
    metadata.fps = fps
    return SampledVideo(frames=np.asarray(frames), indices=indices, fps=fps, total_frames=seen["total"],
                        timestamps=torch.as_tensor(indices, dtype=torch.float64) / fps, metadata=metadata,
                        backend=name)


class _NoFrameCount(Exception):
    pass


def _decode(load_video: Any, path: str, num_frames: int, name: str, label: str):
    """`load_video` with uniform indices over the file's frame count; decoder errors become ValueErrors naming the
    file. Returns (frames, metadata, {"total": frame count, "fps": frame rate})."""
    seen = {}

    def sample(metadata, **_):
        seen["total"], seen["fps"] = int(metadata.total_num_frames or 0), float(metadata.fps or 0.0)
        if seen["total"] <= 0:
            raise _NoFrameCount()
        return uniform_indices(seen["total"], num_frames)

    try:
        frames, metadata = load_video(path, backend=name, sample_indices_fn=sample)
    except _NoFrameCount:
        hint = " (install decord, which counts the frames: pip install decord)" if name == "pyav" else ""
        raise ValueError(f"{label} {path}: the {name} backend finds no frame count in this file{hint}") from None
    except ImportError:
        raise
    except Exception as exc:  # decoder errors (decord's DECORDError, av's FFmpegError, ...): name the file
        msg = " ".join(str(exc).split())
        if "cannot find video stream" in msg:
            raise ValueError(f"{label} {path}: the file has no video stream; give a file with a video track") from exc
        raise ValueError(f"{label} {path}: the {name} backend cannot read it ({type(exc).__name__}: {msg[:300]})"
                         ) from exc
    return frames, metadata, seen


def _field(meta: Any, name: str) -> Any:
    return meta.get(name) if isinstance(meta, dict) else getattr(meta, name, None)


def is_video_metadata(value: Any) -> bool:
    """True for a transformers `VideoMetadata`, or a dict / object with `frames_indices` and `fps` (what
    qwen-vl-utils and the video processors return)."""
    return _field(value, "frames_indices") is not None and _field(value, "fps") is not None


def timestamps_from_metadata(metadata: Any) -> Any:
    """Seconds of the sampled frames, `frames_indices / fps`, from video metadata.

    Args:
        metadata: a transformers `VideoMetadata`, a dict with `frames_indices` and `fps` (qwen-vl-utils'
            `return_video_metadata=True`), or a list of those (one per video).

    Returns:
        a float64 tensor (one video) or a list of them, ready for `generate(..., tango_video_timestamps=...)`.

    Raises:
        ValueError: an entry without `frames_indices` / `fps`, or a non-positive fps.

    Example:
        ```python
        >>> timestamps_from_metadata({"frames_indices": [0, 12, 24], "fps": 24.0})
        tensor([0.0000, 0.5000, 1.0000], dtype=torch.float64)
        ```
    """
    if isinstance(metadata, (list, tuple)):
        return [timestamps_from_metadata(m) for m in metadata]
    if not is_video_metadata(metadata):
        raise ValueError(f"video metadata {metadata!r} has no frames_indices and fps; expected a transformers "
                         "VideoMetadata or a dict with 'frames_indices' and 'fps'")
    fps = float(_field(metadata, "fps"))
    if not 0 < fps < float("inf"):
        raise ValueError(f"video metadata fps={fps!r} must be a positive, finite number")
    return torch.as_tensor(np.asarray(_field(metadata, "frames_indices"), dtype=np.float64)) / fps


__all__ = ["SampledVideo", "read_video", "uniform_indices", "choose_backend", "VIDEO_BACKENDS",
           "timestamps_from_metadata", "is_video_metadata"]
