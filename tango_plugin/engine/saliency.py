"""Saliency signals computed from one vision-transformer layer's queries and keys (maths only, torch only).

The model adapters attach a forward pre-hook to the last ViT attention module, recompute that layer's q and k with
the module's own projections (the tower itself keeps running on SDPA / FlashAttention, nothing is re-run in eager
mode) and turn them into one score per token with the functions below (docs/algorithm.md §1).
"""

from __future__ import annotations

import math

import torch

from . import scratch

SOURCES = ("global_query", "siglip_head", "attention_received")


def _merge_keys(k: torch.Tensor, merge: int) -> torch.Tensor:
    if merge == 1:
        return k
    S, H, n, d = k.shape
    return k.reshape(S, H, n // merge, merge, d).mean(3)


def _transposed_keys(k: torch.Tensor) -> torch.Tensor:
    """``k.float().transpose(-1, -2)`` for the product ``q @ keys``, as that product gets it. When its batch dims
    do not fold into one (a tower's transposed view), matmul copies it into a contiguous (S * H, d, n) tensor
    before its batched product; that copy is made here, converted straight from k into a scratch buffer (one
    pass, no fresh tensor), so the product gets the same operands and gives the same bits."""
    S, H, n, d = k.shape
    try:
        k.transpose(-1, -2).view(S * H, d, n)  # folds without a copy: matmul uses it as it is
        return scratch.float32_copy(k, "saliency.k").transpose(-1, -2)
    except RuntimeError:
        pass
    if k.requires_grad and torch.is_grad_enabled():
        return k.float().transpose(-1, -2)
    return scratch.take("saliency.keys_t", (S, H, d, n), torch.float32, k.device).copy_(k.transpose(-1, -2))


def global_query_saliency(q: torch.Tensor, k: torch.Tensor, merge: int = 1, per_head: bool = False) -> torch.Tensor:
    """FastVID-style "global query" attention: how much the mean query of a group attends to each (merged) key.

    Args:
        q: (S, H, n, d) queries of S groups (frames / temporal slices), H heads, n tokens.
        k: (S, H, n, d) keys, same layout.
        merge: average every `merge` consecutive keys *before* the softmax (Qwen's 2x2 merge units,
            docs/algorithm.md §1.3).
        per_head: return (S, H, n // merge) before the mean over heads (a tensor-parallel tower holds a slice of
            the heads on each rank: gather the slices, then take `.mean(1)`, the same operation as here).

    Returns:
        (S, n // merge) float32: softmax over tokens of ``mean_n(q) . k / sqrt(d)`` per head, averaged over heads.
    """
    if k.shape[2] % merge:
        raise ValueError(f"token count {k.shape[2]} is not a multiple of the merge size {merge}")
    with scratch.session():
        q_bar = scratch.float32_copy(q, "saliency.q").mean(2, keepdim=True)  # mean over tokens: order-invariant
        keys_t = _transposed_keys(k) if merge == 1 else _merge_keys(scratch.float32_copy(k, "saliency.k"), merge).mT
        logits = (q_bar @ keys_t).squeeze(2) / math.sqrt(q.shape[-1])
    heads = logits.softmax(-1)
    return heads if per_head else heads.mean(1)


def attention_received_saliency(q: torch.Tensor, k: torch.Tensor, merge: int = 1,
                                max_elements: int = 1 << 26, per_head: bool = False) -> torch.Tensor:
    """Mean attention each token receives from all queries of its group (softmax(q k^T), heads and queries averaged).

    Computed group by group (bounded memory: at most `max_elements` attention entries at once); tokens of a merge
    unit are averaged *after* the softmax.

    Returns:
        (S, n // merge) float32 (`per_head`: (S, H, n // merge), the mean over queries only).
    """
    S, H, n, d = q.shape
    out = torch.empty(S, H, n, dtype=torch.float32, device=q.device) if per_head else \
        torch.empty(S, n, dtype=torch.float32, device=q.device)
    step = max(1, max_elements // max(1, H * n * n))
    for s in range(0, S, step):
        qs, ks = q[s:s + step].float(), k[s:s + step].float()
        att = (qs @ ks.transpose(-1, -2) / math.sqrt(d)).softmax(-1)
        out[s:s + step] = att.mean(2) if per_head else att.mean(dim=(1, 2))
    if merge > 1:
        out = out.reshape(*out.shape[:-1], n // merge, merge).mean(-1)
    return out


def score(source: str, q: torch.Tensor, k: torch.Tensor, merge: int = 1, per_head: bool = False) -> torch.Tensor:
    """Dispatch to the q/k-based sources ("global_query", "attention_received"); `per_head` keeps the head axis."""
    if source == "global_query":
        return global_query_saliency(q, k, merge, per_head=per_head)
    if source == "attention_received":
        return attention_received_saliency(q, k, merge, per_head=per_head)
    raise ValueError(f"saliency source {source!r} is not computed from q/k; q/k sources: global_query, "
                     "attention_received")


__all__ = ["SOURCES", "global_query_saliency", "attention_received_saliency", "score"]
