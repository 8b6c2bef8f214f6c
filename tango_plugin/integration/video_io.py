"""Reading video files into sampled frames with their exact times (shared by the CLI and the integrations).

Frame k of the sampled set is at ``indices[k] / fps`` seconds: the times ST-RoPE needs (docs/algorithm.md §3).
PyAV is imported inside the functions (the `video` extra).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np
import torch


@dataclass
class SampledVideo:
    """Frames sampled from a video file.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB frames.
        indices: (T,) indices of the sampled frames among the decoded frames.
        fps: average frame rate of the stream.
        total_frames: number of decoded frames.
        timestamps: (T,) seconds of the sampled frames, indices / fps.
    """

    frames: np.ndarray
    indices: np.ndarray
    fps: float
    total_frames: int
    timestamps: torch.Tensor


def _decode(path: str, wanted: set, label: str) -> Tuple[Dict[int, np.ndarray], int, float]:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{label} {path}: the file has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        kept, count = {}, 0
        for frame in container.decode(stream):
            if count in wanted:
                kept[count] = frame.to_ndarray(format="rgb24")
            count += 1
    return kept, count, fps


def read_video(path: str, num_frames: int, label: str = "video") -> SampledVideo:
    """Decode `path` with PyAV and sample `num_frames` frames uniformly over all decoded frames.

    The indices are `np.linspace(0, n - 1, num_frames)` rounded down (lmms-eval / VLMEvalKit), fewer when the video
    has fewer frames. The frame count in the container header is used for a first pass that keeps only the wanted
    frames; when the decoded count differs from it, a second pass samples over the real count.

    Args:
        path: the video file.
        num_frames: frames to sample.
        label: how errors name the file (the CLI says "--video").

    Raises:
        ValueError: the file is missing, unreadable, has no video stream or no frames.
        ImportError: PyAV is not installed (the `video` extra).
    """
    if not os.path.isfile(path):
        raise ValueError(f"{label} {path}: no such file")
    try:
        import av
    except ImportError as exc:
        raise ImportError("reading video files needs PyAV: pip install -e \".[hf,video]\" "
                          "(or pip install 'tango-plugin[hf,video]')") from exc

    def pick(total: int) -> np.ndarray:
        return np.unique(np.linspace(0, total - 1, min(num_frames, total)).astype(np.int64))

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{label} {path}: the file has no video stream")
            header = int(container.streams.video[0].frames or 0)
        kept, total, fps = _decode(path, set(pick(header).tolist()) if header > 0 else set(), label)
        if total == 0:
            raise ValueError(f"{label} {path}: no frames could be decoded")
        indices = pick(total)
        if total != header or set(kept) != set(indices.tolist()):
            kept, total, fps = _decode(path, set(indices.tolist()), label)
    except av.error.FFmpegError as exc:
        raise ValueError(f"{label} {path}: PyAV cannot read it ({exc})") from exc
    if fps <= 0:
        raise ValueError(f"{label} {path}: the stream has no frame rate, so frame times are unknown")
    frames = np.stack([kept[int(i)] for i in indices])
    return SampledVideo(frames=frames, indices=indices, fps=fps, total_frames=total,
                        timestamps=torch.as_tensor(indices, dtype=torch.float64) / fps)


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


__all__ = ["SampledVideo", "read_video", "timestamps_from_metadata", "is_video_metadata"]
