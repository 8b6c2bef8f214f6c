"""`tango-plugin prune`: the engine on saved tensors (`torch.save` of a dict)."""

from __future__ import annotations

import os
import time

import torch

from ..config import TangoConfig
from ..strategies import prune_video_tokens
from .picture import kept_map_png

LAYOUT = ("a dict saved with torch.save: features (T, L, D), saliency (T, L), grid_hw (H, W) and optionally "
          "timestamps (T,), frame_embeddings (T, D')")


def cmd_prune(args) -> int:
    """Bad input (no such file, not a torch file, not that dict) is a ValueError: one `error:` line, exit 2."""
    if not os.path.isfile(args.input):
        raise ValueError(f"input={args.input!r}: no such file; expected {LAYOUT}")
    try:
        data = torch.load(args.input, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch.load raises on a file it cannot read
        first_line = (str(exc).splitlines() or [""])[0]
        raise ValueError(f"input={args.input!r}: torch.load cannot read it ({type(exc).__name__}: {first_line}); "
                         f"expected {LAYOUT}") from exc
    missing = [k for k in ("features", "saliency", "grid_hw") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"input={args.input!r}: missing keys {missing}; expected {LAYOUT}")
    cfg = TangoConfig.from_json(open(args.config).read()) if args.config else TangoConfig(retention_ratio=args.ratio)
    t0 = time.perf_counter()
    res = prune_video_tokens(data["features"], data["saliency"], tuple(data["grid_hw"]), data.get("timestamps"), cfg,
                             data.get("frame_embeddings"))
    T, L = data["saliency"].shape
    print(f"kept {res.kept_indices.numel()} of {T * L} tokens ({res.kept_indices.numel() / (T * L):.3f}) in "
          f"{time.perf_counter() - t0:.3f} s")
    if args.output:
        torch.save({"kept_indices": res.kept_indices, "features": res.features, "config": cfg.to_dict()}, args.output)
        print(f"wrote {args.output}")
    if args.picture:
        print(f"wrote {kept_map_png(args.picture, data['saliency'], tuple(data['grid_hw']), res.kept_indices)}")
    return 0
