"""Run the paper's own code (a local checkout of xjtupanda/Tango) on the same inputs as the engine.

Nothing of the reference is copied here: this loads `tango/utils.py`, `tango/pruner.py` and
`llava/model/st_rope.py` from the folder named by `TANGO_REFERENCE_PATH` (or `--reference`), with a stub of
its global `PRUNE_CONFIG`, and calls its `tango_pruner` exactly as its LLaVA code path does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from typing import Optional

import torch
import torch.nn.functional as F

_PKG = "_tango_reference"


def reference_path(path: Optional[str] = None) -> Optional[str]:
    path = path or os.environ.get("TANGO_REFERENCE_PATH")
    if path and os.path.isfile(os.path.join(path, "tango", "pruner.py")):
        return path
    return None


def _load(path: str):
    if _PKG in sys.modules:
        return sys.modules[_PKG]
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = [os.path.join(path, "tango")]  # a package without running the reference's __init__
    sys.modules[_PKG] = pkg
    config = types.ModuleType(f"{_PKG}.prune_config")
    config.PRUNE_CONFIG = {"alpha": 1.5, "special_attn_token_list": []}
    sys.modules[config.__name__] = config
    for name in ("utils", "pruner"):
        spec = importlib.util.spec_from_file_location(f"{_PKG}.{name}", os.path.join(path, "tango", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    rope_file = os.path.join(path, "llava", "model", "st_rope.py")
    spec = importlib.util.spec_from_file_location(f"{_PKG}.st_rope", rope_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pkg.st_rope = module
    pkg.config = config
    pkg.pruner = sys.modules[f"{_PKG}.pruner"]
    return pkg


@contextlib.contextmanager
def _no_tie_noise(enabled: bool):
    """Replace the reference's unseeded `rand_like * 1e-6` tie-break noise by zeros."""
    if not enabled:
        yield
        return
    original = torch.rand_like
    torch.rand_like = lambda t, *a, **k: torch.zeros_like(t)
    try:
        yield
    finally:
        torch.rand_like = original


def run_reference(features, saliency, grid_hw, timestamps, cfg, frame_embeddings=None, path=None,
                  zero_noise=True):
    """The reference's (kept_indices, kept_features) for one video; inputs are copied first."""
    ref = _load(reference_path(path))
    from tango_plugin.engine.strope import strope_sections

    H, W = grid_hw
    if H != W:
        raise ValueError("the reference's LLaVA ST-RoPE needs a square grid")
    ref.config.PRUNE_CONFIG.update(alpha=cfg.alpha, special_attn_token_list=list(cfg.sink_positions or []))
    T, L, D = features.shape
    rope_cfg = types.SimpleNamespace(base_time=cfg.base_time, base_space=cfg.base_space,
                                     strope_section=list(strope_sections(D)))
    rope = ref.st_rope.SpatioTemporalRoPE(rope_cfg)
    feats = features.clone()
    roped = rope(F.normalize(feats.clone().float(), dim=-1),
                 t_ids=None if timestamps is None else torch.as_tensor(timestamps).clone())
    sim_metric = feats if cfg.segmentation == "holitom" else frame_embeddings.clone()
    with _no_tie_noise(zero_noise), torch.inference_mode():
        merged, kept = ref.pruner.tango_pruner(
            image_features=feats, roped_image_features=roped, sim_metric=sim_metric,
            salient_score=saliency.clone(), segment_type=cfg.segmentation, retain_ratio=cfg.retention_ratio,
            context_ratio=cfg.context_ratio, tau=cfg.similarity_threshold, beta=cfg.beta,
            k_neighbors=cfg.num_neighbors)
    return kept, merged.reshape(T * L, D)[kept]
