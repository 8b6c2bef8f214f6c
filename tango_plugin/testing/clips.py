"""Small synthetic video files (MPEG-4, written with PyAV): the clips the docs' commands and the harness tests run
on. Every frame differs (a random pattern sliding right by 4 pixels a frame), so a decoder's frame indices can be
checked from the pixels."""

from __future__ import annotations

from typing import Optional


def write_clip(path: str, frames: int, fps: int, side: int = 112, seed: Optional[int] = None) -> str:
    """Write a `frames`-frame clip at `fps` frames per second, `side` x `side` pixels, to `path`; return the path.

    Args:
        seed: seed of the pattern (default: `frames`, so clips of different lengths differ).
    """
    import av
    import numpy as np

    for name, value, low in (("frames", frames, 1), ("fps", fps, 1), ("side", side, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= {low}")
    base = np.random.default_rng(frames if seed is None else seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


__all__ = ["write_clip"]
