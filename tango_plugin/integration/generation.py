"""The `generate` plumbing of a pruned prefill (docs/usage.md, "Generate modes"): what the caller gets back, and how a
later `generate` continues from the cache a pruned one left.

A pruned `generate` runs the model on a shorter prompt. The caller must not see that: `give_back` returns their own
prompt followed by the new tokens, and marks the cache with a `Continuation` (both layouts); `continued_inputs` turns
a next turn that starts with the returned sequences into inputs that start with the sequences the cache was really
built from. `lengths_as_given` keeps `max_length` / `min_length` counting the caller's prompt. These are plain
functions of the call's keyword arguments; `splice.VideoSpliceAdapter` calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

import torch

#: attribute a cache object gets after a pruned generate (see `continued_inputs`)
CONTINUATION_ATTR = "_tango_continuation"


@dataclass
class Continuation:
    """How a cache left by a pruned `generate` lines up with the sequences that generate returned.

    Args:
        full: (B, Lf) the sequences returned to the caller (their prompt + new tokens).
        short: (B, Ls) the sequences the cache was built from (the pruned prompt + the same new tokens).
        short_mask: (B, Ls) attention mask of `short` (None: no mask was used).
        short_types: (B, Ls) `mm_token_type_ids` of `short` (None when the model takes none).
        intra_llm: the intra-LLM stage ran (its layers K.. cached a reduced sequence).
    """

    full: torch.Tensor
    short: torch.Tensor
    short_mask: Optional[torch.Tensor]
    short_types: Optional[torch.Tensor]
    intra_llm: bool = False


def cache_of(kw: Mapping) -> Any:
    """The call's cache (`past_key_values`, or `cache` for the models that name it so), or None."""
    cache = kw.get("past_key_values")
    return cache if cache is not None else kw.get("cache")


def continuation_of(kw: Mapping) -> Optional[Continuation]:
    """The `Continuation` of the call's cache when it was left by a pruned generate, else None."""
    cache = cache_of(kw)
    return None if cache is None else getattr(cache, CONTINUATION_ATTR, None)


def _default_generation_value(name: str) -> Any:
    from transformers import GenerationConfig

    return getattr(GenerationConfig(), name)


def lengths_as_given(kw: dict, caller_length: int) -> None:
    """`max_length` / `min_length` count the caller's prompt, as without the plugin: turn them (in `kw` or in its
    `generation_config`) into new-token counts before the prompt gets shorter. Modifies `kw`."""
    cfg = kw.get("generation_config")
    for total, new in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
        value = kw.pop(total, None)
        if value is None and cfg is not None and getattr(cfg, new, None) is None:
            from_cfg = getattr(cfg, total, None)
            if from_cfg is not None and from_cfg != _default_generation_value(total):
                value = from_cfg
        if value is None or kw.get(new) is not None:
            continue
        if total == "max_length" and value <= caller_length:
            raise ValueError(f"Input length of input_ids is {caller_length}, but `max_length` is set to {value}. "
                             "Increase `max_length` or, better, set `max_new_tokens`.")
        kw[new] = max(0, int(value) - caller_length)


def give_back(out: Any, prompt: torch.Tensor, short_length: int, short_mask: Optional[torch.Tensor],
              short_types: Optional[torch.Tensor], given_cache: Any, intra: bool) -> Any:
    """What the unpruned model returns: the caller's `prompt` followed by the new tokens (so that
    `out[:, inputs.input_ids.shape[1]:]` still slices the answer); the cache remembers both layouts so a later
    `generate` can continue from it.

    Args:
        out: what the original `generate` returned on the short prompt (a tensor or an output object).
        short_length: the short prompt's length; short_mask / short_types: its attention mask and token types.
        given_cache: the cache the call passed in (else the output's own is marked).
        intra: the intra-LLM stage ran in this call.
    """
    seqs = out if isinstance(out, torch.Tensor) else out.sequences
    copies = seqs.shape[0] // prompt.shape[0]  # num_return_sequences / beams: generate repeats each row
    full = torch.cat([prompt.to(seqs.device).repeat_interleave(copies, dim=0), seqs[:, short_length:]], dim=1)
    cache = given_cache if given_cache is not None else getattr(out, "past_key_values", None)
    if cache is not None and hasattr(cache, "get_seq_length"):
        new = seqs.shape[1] - short_length

        def extend(t: Optional[torch.Tensor], value: int) -> Optional[torch.Tensor]:
            if t is None:
                return None
            t = t.to(seqs.device).repeat_interleave(copies, dim=0)
            return torch.cat([t, t.new_full((t.shape[0], new), value)], dim=1)

        setattr(cache, CONTINUATION_ATTR, Continuation(full=full, short=seqs, short_mask=extend(short_mask, 1),
                                                       short_types=extend(short_types, 0), intra_llm=intra))
    if isinstance(out, torch.Tensor):
        return full
    out.sequences = full
    return out


def continued_inputs(kw: dict, previous: Continuation, brings_media: bool, media_kwargs: Tuple[str, ...]) -> dict:
    """The inputs of `generate(previous sequences + new turn, past_key_values=cache)` after a pruned generate.

    The cache holds the pruned prompt, so the prefix the caller passes (the full sequences returned to them) is
    swapped for the sequences the cache was really built from; the new turn follows. Refused clearly: a cache whose
    layers hold an intra-LLM reduction, new media pixels (`brings_media`), input ids that do not start with the
    returned sequences. `media_kwargs`: the first turn's media keywords, dropped (its media are in the cache).
    """
    ids = kw.get("input_ids")
    full, short = previous.full, previous.short
    if previous.intra_llm:
        raise ValueError("continuing from the cache of a generate that ran the intra-LLM stage is not supported "
                         "(layers K.. cached a reduced sequence); start a new generate with the whole conversation")
    if brings_media:
        raise ValueError("a continuation from a pruned cache cannot bring new video (or pruned image) pixels; "
                         "start a new generate with the whole conversation")
    if ids is None or ids.shape[0] != full.shape[0] or ids.shape[1] < full.shape[1] or not torch.equal(
            ids[:, :full.shape[1]].to(full.device), full):
        raise ValueError("past_key_values holds the pruned prompt of an earlier tango_plugin generate; continue "
                         "from it with input_ids that start with exactly the sequences that generate returned "
                         f"({tuple(full.shape)}), followed by the new tokens; got input_ids of shape "
                         f"{None if ids is None else tuple(ids.shape)}")
    tail = ids[:, full.shape[1]:]
    kw = dict(kw)
    kw["input_ids"] = torch.cat([short.to(ids.device), tail], dim=1)
    mask = kw.get("attention_mask")
    if mask is not None or previous.short_mask is not None:
        head = previous.short_mask if previous.short_mask is not None else torch.ones_like(short)
        rest = mask[:, full.shape[1]:] if mask is not None else torch.ones_like(tail)
        kw["attention_mask"] = torch.cat([head.to(ids.device), rest.to(ids.device)], dim=1)
    if kw.get("mm_token_type_ids") is not None:
        head = previous.short_types if previous.short_types is not None else torch.zeros_like(short)
        kw["mm_token_type_ids"] = torch.cat([head.to(ids.device), kw["mm_token_type_ids"][:, full.shape[1]:]], dim=1)
    for name in media_kwargs + ("tango_video_timestamps",):
        kw.pop(name, None)
    return kw
