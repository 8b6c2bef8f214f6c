"""The saliency signal inside vLLM's vision towers: the queries and keys of the last (feature) ViT layer, as that
layer's own attention kernel receives them.

vLLM's towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SigLIP) hand q and k to an `MMEncoderAttention` module. A forward
pre-hook on that module of the scored layer, attached for one tower call only, reads them (after the rotary
embedding, exactly what the layer attends with) and scores them with `tango_plugin.engine.saliency` (the
`global_query` source of the transformers adapters, docs/algorithm.md §1.3). Nothing is recomputed and the tower
keeps its own attention backend.

Tensor parallel: a sharded tower holds `heads / tp` heads per rank. Each rank scores its own heads, the per-head
scores are all-gathered along the head axis (in rank order, which is head order) and then averaged, the same
operation as on one GPU, so every rank sees the same scores and makes the same decision.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List

import torch

from tango_plugin.engine.saliency import score


def _gather_heads(per_head: torch.Tensor, tp_size: int) -> torch.Tensor:
    """(S, H_local, n) scores of this rank's heads -> (S, H, n) of every head, in head order."""
    if tp_size <= 1:
        return per_head
    from vllm.distributed import tensor_model_parallel_all_gather

    return tensor_model_parallel_all_gather(per_head.contiguous(), dim=1)


@contextlib.contextmanager
def capture_qk(attention: torch.nn.Module) -> Iterator[List[tuple]]:
    """Record the (query, key) an `MMEncoderAttention` module is called with, for the duration of the block."""
    calls: List[tuple] = []

    def hook(module, args, kwargs):
        q = args[0] if len(args) > 0 else kwargs["query"]
        k = args[1] if len(args) > 1 else kwargs["key"]
        calls.append((q.detach(), k.detach()))

    handle = attention.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def qwen_slice_scores(q: torch.Tensor, k: torch.Tensor, grids: List[tuple], merge: int, source: str,
                      tp_size: int) -> List[torch.Tensor]:
    """Scores of a Qwen-style tower's last block, one (t, L) tensor per video (tower order, i.e. window order for
    Qwen2.5-VL), from q / k of shape (1, tokens, heads, d): each temporal slice's tokens attend among themselves
    and every `merge` consecutive tokens are one merged LLM token."""
    q, k = q.squeeze(0), k.squeeze(0)  # (tokens, heads, d)
    out, offset = [], 0
    for t, h, w in grids:
        size = t * h * w
        qs = q[offset:offset + size].reshape(t, h * w, q.shape[1], q.shape[2]).transpose(1, 2)
        ks = k[offset:offset + size].reshape(t, h * w, k.shape[1], k.shape[2]).transpose(1, 2)
        per_head = _gather_heads(score(source, qs, ks, merge=merge, per_head=True), tp_size)
        out.append(per_head.mean(1))
        offset += size
    return out


def frame_scores(q: torch.Tensor, k: torch.Tensor, heads_per_rank: int, source: str, tp_size: int) -> torch.Tensor:
    """(frames, patches) scores of a SigLIP / CLIP layer from q / k of shape (frames, patches, heads * d)."""
    n, p, width = q.shape
    d = width // heads_per_rank
    qs = q.reshape(n, p, heads_per_rank, d).transpose(1, 2)
    ks = k.reshape(n, p, heads_per_rank, d).transpose(1, 2)
    return _gather_heads(score(source, qs, ks, per_head=True), tp_size).mean(1)


def run_with_scores(attention: torch.nn.Module, run: Callable[[], torch.Tensor],
                    scorer: Callable[[torch.Tensor, torch.Tensor], object]) -> tuple:
    """Run the tower (`run()`) with q / k captured at `attention`; return (its output, scorer(q, k)).

    Raises:
        RuntimeError: the layer was not called exactly once (a tower that splits the call would need its pieces
            stitched; refuse rather than score a part).
    """
    with capture_qk(attention) as calls:
        output = run()
    if len(calls) != 1:
        raise RuntimeError(f"tango: expected one call of the scored attention layer, saw {len(calls)}")
    q, k = calls[0]
    return output, scorer(q, k)


def tp_size_of(attention_parent: torch.nn.Module) -> int:
    """Ranks the heads of a vLLM vision attention module are split over (1 when not sharded)."""
    return int(getattr(attention_parent, "tp_size", 1) or 1)


__all__ = ["capture_qk", "qwen_slice_scores", "frame_scores", "run_with_scores", "tp_size_of"]
