"""`tango-plugin prune`: the engine on saved tensors (`torch.save` of a dict)."""

from __future__ import annotations

import time

import torch

from ..config import TangoConfig
from ..strategies import prune_video_tokens
from .picture import kept_map_png


def cmd_prune(args) -> int:
    data = torch.load(args.input, map_location="cpu", weights_only=True)
    missing = [k for k in ("features", "saliency", "grid_hw") if k not in data]
    if missing:
        raise SystemExit(f"{args.input}: missing keys {missing}; expected a dict with features (T, L, D), "
                         "saliency (T, L), grid_hw (H, W) and optionally timestamps (T,), frame_embeddings (T, D')")
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
