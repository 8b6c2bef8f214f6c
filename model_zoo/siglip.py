"""The SigLIP attention-pooling head as a saliency source (docs/algorithm.md §1.1), shared by the LLaVA families.

The LLaVA checkpoints do not carry the head (llava's loader even deletes the tower's last layer), so it comes from a
separate local SigLIP checkpoint, as in the paper's runs. Works with transformers 4.x and 5.x; transformers is
imported inside the loader only.
"""

from __future__ import annotations

from typing import Tuple

import torch


def load_siglip_head(path: str):
    """`(post_layernorm, head)` of a local SigLIP checkpoint (vision or full SigLIP) that has the attention-pooling
    head; works with transformers 4.x (modules under `.vision_model`) and 5.x."""
    from transformers import SiglipVisionModel

    try:
        tower = SiglipVisionModel.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the field name
        raise ValueError(f"siglip_head_path={path!r}: cannot load a SigLIP vision checkpoint from there "
                         f"({exc})") from exc
    vision = getattr(tower, "vision_model", tower)
    head = getattr(vision, "head", None)
    if not getattr(vision, "use_head", True) or head is None or not hasattr(head, "probe"):
        raise ValueError(f"siglip_head_path={path!r}: the checkpoint has no attention-pooling head "
                         "(vision_use_head is False)")
    post_ln = vision.post_layernorm
    for name in ("encoder", "embeddings"):  # only the head is used; free the rest
        if hasattr(vision, name):
            delattr(vision, name)
    return post_ln.eval(), head.eval()


def siglip_head_scores(post_ln, head, hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(per-patch attention of the head's probe (N, P), the head's own output (N, C)) for (N, P, C) hidden states of
    the tower's last layer; the output serves as the per-frame global embedding (fastvid segmentation)."""
    post_ln.to(hidden.device, hidden.dtype)
    head.to(hidden.device, hidden.dtype)
    z = post_ln(hidden)
    probe = head.probe.repeat(z.shape[0], 1, 1)
    pooled, weights = head.attention(probe, z, z, need_weights=True, average_attn_weights=True)
    return weights[:, 0].float(), (pooled + head.mlp(head.layernorm(pooled)))[:, 0].float()


__all__ = ["load_siglip_head", "siglip_head_scores"]
