"""The intra-LLM stage of Tango's LLaVA-Video runs (docs/algorithm.md §6), as hooks on a Hugging Face decoder.

With `TangoConfig.intra_llm_layer = K`, layers 0..K-1 see the (already Tango-pruned) prompt; before layer K each
video keeps `round(n * intra_llm_ratio)` of its n tokens, the ones the last prompt token attends to most in layer
K-1 (mean over heads), and every other token of the video is merged into its most similar kept token
(`engine.intra_llm.intra_llm_merge`). Layers K.. run on the shorter sequence and cache only it; kept tokens keep
their original positions, so decoding continues with the unpruned positions.

How it hooks in, per model instance and reversibly (every piece is an entry of the handle's `HookRegistry`):

* scoring: layer K-1's attention module gets its own shallow copy of the text config whose attention
  implementation names a registered function. That function reads the last query row's attention from the
  post-RoPE q/k it is given, then calls the model's real implementation (SDPA or eager) unchanged. So the scoring
  layer runs causally, as in the unpruned model; the reference forces it to eager attention without a mask, which
  makes that layer attend bidirectionally in prefill (docs/algorithm.md §7, fixed here);
* reduction: a forward pre-hook on layer K replaces its hidden states by the reduced ones; pre-hooks on layers K..
  replace the full-length attention mask, rotary embeddings and position ids the decoder loop hands every layer by
  their reduced versions (prefill) or map the mask onto the reduced cache (decode).

Only `generate` arms the stage (one prefill per call): a plain `forward` must return one logit row per input
token, so it runs without the intra-LLM stage (and says so once).
"""

from __future__ import annotations

import copy
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Tuple

import torch

from ..engine.intra_llm import intra_llm_merge
from .generation import cache_of

SCORING_IMPLEMENTATION = "tango_intra_llm_scoring"
SUPPORTED_IMPLEMENTATIONS = ("sdpa", "eager")


def _scoring_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention function of the scoring layer: record the last row's attention, then run the real one."""
    stage: "IntraLLMStage" = module.config._tango_intra_llm_stage
    if stage.active() and stage.reduction is None and query.shape[2] > 1:
        stage.scores = last_row_attention(query, key, attention_mask, kwargs.get("scaling") or module.scaling)
    return stage.real_attention(module)(module, query, key, value, attention_mask, **kwargs)


def _register_scoring_function() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SCORING_IMPLEMENTATION, _scoring_attention)


def last_row_attention(query: torch.Tensor, key: torch.Tensor, mask: Optional[torch.Tensor],
                       scaling: float) -> torch.Tensor:
    """(B, Lk) attention of the last query row, softmax over the keys it may see, mean over heads (float32).

    Args:
        query: (B, H, Lq, d) after RoPE. key: (B, Hkv, Lk, d) after RoPE (grouped heads are repeated).
        mask: None (every key visible to the last row), or the layer's 4-D mask (bool: True = visible;
            float: additive).
    """
    q = query[:, :, -1:].float()
    k = key.float()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q @ k.transpose(-1, -2)) * scaling  # (B, H, 1, Lk)
    if mask is not None:
        m = mask[:, :, -1:, : k.shape[2]]
        logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.float()
    return logits.softmax(-1).mean(1)[:, 0]


def dynamic_cache_or_warn(model: Any, state: Any, kw: Mapping) -> bool:
    """Whether a generate call's cache lets the stage run: it caches a shorter sequence in layers K.., which only a
    dynamic cache allows (per-layer lengths). Otherwise warn once (on `state`) that the call runs without it."""
    impl = kw.get("cache_implementation") or getattr(model.generation_config, "cache_implementation", None)
    cache = cache_of(kw)
    if impl not in (None, "dynamic") or (cache is not None and type(cache).__name__ != "DynamicCache"):
        what = impl if impl not in (None, "dynamic") else type(cache).__name__
        state.warn_once("intra-cache", f"intra_llm_layer needs a dynamic cache (layers K.. cache fewer tokens); "
                                       f"this generate call uses {what!r} and runs without it")
        return False
    return True


@dataclass
class Reduction:
    """The reduced layout of one prefill.

    Args:
        keep: (B, L') indices into the full prompt, rows left-padded with 0 where `valid` is False.
        valid: (B, L') False on the padding slots the reduction added (rows keep different counts).
        full_length: length of the prompt the layers before K saw (their cache length after prefill).
        hidden: (B, L', D) the reduced input of layer K.
        mask: the attention mask of the reduced prefill (None: plain causal, no padding).
    """

    keep: torch.Tensor
    valid: torch.Tensor
    full_length: int
    hidden: torch.Tensor
    mask: Optional[torch.Tensor]


class IntraLLMStage:
    """Hooks that prune video tokens inside the LLM at layer `first_reduced_layer` (= `intra_llm_layer`).

    Args:
        layers: the decoder's `nn.ModuleList` of layers.
        first_reduced_layer: K; layer K-1 scores, layers K.. see the reduced sequence.
        ratio: share of each video's tokens kept at layer K.
        on_reduced: called with the per-row visual token counts after the reduction (for the report).
    """

    def __init__(self, layers, first_reduced_layer: int, ratio: float,
                 on_reduced: Optional[Callable[[List[int]], None]] = None) -> None:
        self.layers = layers
        self.k = first_reduced_layer
        self.ratio = ratio
        self.on_reduced = on_reduced
        self.armed = False
        self.owner: Optional[int] = None  # the thread whose generate armed the stage (it acts for that one only)
        self.spans: List[List[torch.Tensor]] = []
        self.scores: Optional[torch.Tensor] = None
        self.reduction: Optional[Reduction] = None
        self._prefill_layers_left = 0
        self._decoded = 0
        self._decode_cache: Tuple[Any, int, Any] = (None, 0, None)
        self._shared_config = None

    # ------------------------------------------------------------------------------------------ install
    def install(self, hooks) -> None:
        """Attach the stage through `hooks` (the handle's `HookRegistry`): the scoring layer's own config (an
        attribute swap) and one forward pre-hook per reduced layer. `hooks.remove_all()` takes them off."""
        _register_scoring_function()
        attn = self.layers[self.k - 1].self_attn
        self._shared_config = attn.config
        own = copy.copy(attn.config)
        own._attn_implementation_internal = SCORING_IMPLEMENTATION
        own._tango_intra_llm_stage = self
        hooks.set_attribute(f"intra_llm:scoring_config:layer{self.k - 1}", attn, "config", own)
        self._implementation = self._shared_config._attn_implementation
        for i in range(self.k, len(self.layers)):
            hooks.add_forward_pre_hook(f"intra_llm:reduce:layer{i}", self.layers[i],
                                       _ReduceHook(self, first=i == self.k), with_kwargs=True)

    def real_attention(self, module) -> Callable:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        eager = sys.modules[type(module).__module__].eager_attention_forward
        return ALL_ATTENTION_FUNCTIONS.get_interface(self._implementation, eager)

    # ------------------------------------------------------------------------------------------ per call
    def arm(self, spans: List[List[torch.Tensor]]) -> bool:
        """Prune at the next prefill. `spans[b]`: one tensor of prompt positions per video of row b.

        Returns False (and stays disarmed) when the model was switched to an unsupported attention implementation
        after `enable`.
        """
        self.disarm()
        self._implementation = self._shared_config._attn_implementation  # the model's current choice
        if self._implementation not in SUPPORTED_IMPLEMENTATIONS:
            return False
        self.spans = spans
        self.armed, self.owner = True, threading.get_ident()
        return True

    def active(self) -> bool:
        """Armed, and this is the thread that armed it (another thread's call through the same layers is not
        this generate's; the adapters run one armed generate at a time, integration/threads.py)."""
        return self.armed and self.owner == threading.get_ident()

    def disarm(self) -> None:
        self.armed, self.owner = False, None
        self.spans, self.scores, self.reduction = [], None, None
        self._prefill_layers_left = 0
        self._decoded = 0
        self._decode_cache = (None, None, None)

    # ------------------------------------------------------------------------------------------ hooks
    def pre_hook(self, module, args, kwargs, first: bool):
        """Forward pre-hook of layers K.. (`first`: layer K, which reduces the hidden states)."""
        if not self.active():
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        if first and self.reduction is None:
            self._reduce(hidden, kwargs)
        if self.reduction is None:
            return None
        if self._prefill_layers_left > 0:
            self._prefill_layers_left -= 1
            return self._prefill_arguments(args, kwargs, first)
        if first:
            self._decoded += hidden.shape[1]  # tokens appended to the reduced cache so far, this step included
        return self._decode_arguments(args, kwargs)

    def _reduce(self, hidden: torch.Tensor, kwargs: dict) -> None:
        if self.scores is None:
            raise RuntimeError("tango_plugin intra-LLM stage: layer K-1 produced no attention scores in this "
                               "prefill (was its attention implementation changed after enable()?)")
        B, L, _ = hidden.shape
        scores = self.scores.to(hidden.device)
        spans = self.spans
        if B != len(spans):
            # beam search / num_return_sequences: generate repeats every row `B / rows` times (repeat_interleave)
            if not spans or B % len(spans):
                raise RuntimeError(f"tango_plugin intra-LLM stage: the decoder got {B} rows for {len(spans)} prompts")
            spans = [spans[b // (B // len(spans))] for b in range(B)]
        rows, new_rows, visual_after = [], [], []
        for b in range(B):
            dropped = torch.zeros(L, dtype=torch.bool, device=hidden.device)
            row = hidden[b].clone()
            count = 0
            for span in spans[b]:
                span = span.to(hidden.device)
                kept, merged = intra_llm_merge(hidden[b, span], scores[b, span], self.ratio)
                dropped[span] = True
                dropped[span[kept]] = False
                row[span[kept]] = merged
                count += int(kept.numel())
            keep = (~dropped).nonzero(as_tuple=True)[0]
            rows.append(keep)
            new_rows.append(row[keep])
            visual_after.append(count)
        Lr = max(int(k.numel()) for k in rows)
        keep = torch.zeros(B, Lr, dtype=torch.long, device=hidden.device)
        valid = torch.zeros(B, Lr, dtype=torch.bool, device=hidden.device)
        reduced = hidden.new_zeros(B, Lr, hidden.shape[-1])
        for b, (k, h) in enumerate(zip(rows, new_rows)):
            n = int(k.numel())
            keep[b, Lr - n:], valid[b, Lr - n:], reduced[b, Lr - n:] = k, True, h  # left padding, as generate
        mask = self._prefill_mask(kwargs.get("attention_mask"), keep, valid, L, hidden.dtype)
        self.reduction = Reduction(keep=keep, valid=valid, full_length=L, hidden=reduced, mask=mask)
        self._prefill_layers_left = len(self.layers) - self.k
        self.scores = None
        if self.on_reduced is not None:
            self.on_reduced(visual_after[:: B // len(self.spans)])

    def _mask_format(self, given: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.dtype]:
        """dtype of the masks we hand the layers: the given mask's, or bool for SDPA / additive for eager."""
        if given is not None:
            return given.dtype
        return torch.bool if self._implementation == "sdpa" else dtype

    @staticmethod
    def _as_format(allowed: torch.Tensor, fmt: torch.dtype) -> torch.Tensor:
        if fmt == torch.bool:
            return allowed
        return torch.zeros(allowed.shape, dtype=fmt, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(fmt).min)

    @staticmethod
    def _allowed(mask: torch.Tensor) -> torch.Tensor:
        return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2

    def _prefill_mask(self, given: Optional[torch.Tensor], keep: torch.Tensor, valid: torch.Tensor, L: int,
                      dtype: torch.dtype) -> Optional[torch.Tensor]:
        B, Lr = keep.shape
        if given is None and bool(valid.all()):
            return None  # kept tokens stay in causal order: the model's own causal path applies
        if given is None:
            allowed = torch.ones(L, L, dtype=torch.bool, device=keep.device).tril()[None].expand(B, L, L)
        elif given.dim() == 4:
            allowed = self._allowed(given)[:, 0].expand(B, -1, -1)
        else:
            raise ValueError(f"tango_plugin intra-LLM stage: unsupported attention mask of shape "
                             f"{tuple(given.shape)} (expected a 4-D mask or None; FlashAttention is not supported)")
        rows = allowed.gather(1, keep[:, :, None].expand(B, Lr, allowed.shape[2]))
        red = rows.gather(2, keep[:, None, :].expand(B, Lr, Lr)) & valid[:, None, :]
        # padding slots we added attend to themselves only (a fully masked row would give NaN in SDPA)
        eye = torch.eye(Lr, dtype=torch.bool, device=keep.device)[None]
        red = torch.where(valid[:, :, None], red, eye)
        return self._as_format(red[:, None], self._mask_format(given, dtype))

    def _prefill_arguments(self, args: tuple, kwargs: dict, first: bool):
        red = self.reduction
        kwargs = dict(kwargs)
        if first:
            args = (red.hidden, *args[1:]) if args else args
            if not args:
                kwargs["hidden_states"] = red.hidden
        kwargs["attention_mask"] = red.mask
        pe = kwargs.get("position_embeddings")
        if pe is not None:
            kwargs["position_embeddings"] = tuple(self._gather_seq(t, red.keep) for t in pe)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = self._gather_seq(kwargs["position_ids"][..., None], red.keep)[..., 0]
        return args, kwargs

    @staticmethod
    def _gather_seq(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Gather dim -2 (the sequence) of a (..., B or 1, L, d) tensor with per-row indices (B, L')."""
        B, Lr = keep.shape
        keep = keep.to(t.device)  # layers may sit on different devices (device_map="auto")
        lead = t.shape[:-3]
        t = t.expand(*lead, B, *t.shape[-2:])
        idx = keep[..., None].expand(*lead, B, Lr, t.shape[-1])
        return t.gather(-2, idx)

    def _decode_arguments(self, args: tuple, kwargs: dict):
        given = kwargs.get("attention_mask")
        key, step, cached = self._decode_cache
        if key is not given or step != self._decoded:  # one new mask per decode step, shared by layers K..
            cached = self._decode_mask(given, args[0] if args else kwargs["hidden_states"])
            self._decode_cache = (given, self._decoded, cached)
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = cached
        return args, kwargs

    def _decode_mask(self, given: Optional[torch.Tensor], hidden: torch.Tensor) -> Optional[torch.Tensor]:
        red = self.reduction
        B, Lr = red.keep.shape
        q = hidden.shape[1]
        if given is None:
            if bool(red.valid.all()):
                return None
            # no mask: every key visible, causal among the new tokens
            steps = self._decoded
            new = torch.ones(q, steps, dtype=torch.bool, device=hidden.device).tril(steps - q)
            valid = red.valid.to(hidden.device)
            allowed = torch.cat([valid[:, None, :].expand(B, q, Lr), new[None].expand(B, q, steps)], dim=-1)
            return self._as_format(allowed[:, None], self._mask_format(None, hidden.dtype))
        if given.dim() != 4:
            raise ValueError(f"tango_plugin intra-LLM stage: unsupported decode attention mask of shape "
                             f"{tuple(given.shape)}")
        allowed = self._allowed(given)[:, 0].expand(B, -1, -1)  # (B, q, full + steps)
        keep, valid = red.keep.to(given.device), red.valid.to(given.device)
        old = allowed[..., : red.full_length].gather(2, keep[:, None, :].expand(B, q, Lr)) & valid[:, None]
        allowed = torch.cat([old, allowed[..., red.full_length:]], dim=-1)
        return self._as_format(allowed[:, None], given.dtype)


class IntraLLMLifecycle:
    """The intra-LLM stage's life on an adapter (validate, install, record, close), shared by the transformers
    splice adapters and the `llava` adapter. The adapter provides `text_layers()` and `text_attention()`, and may
    raise `min_intra_llm_layer()`; `stage_class` is the `IntraLLMStage` it needs. Needs `self.config`, `self.hooks`
    and `self.state` (a `ModelAdapter`'s)."""

    stage_class = IntraLLMStage
    _intra: Optional[IntraLLMStage] = None  # the stage while installed

    def text_layers(self):
        """The language model's decoder layers (the stage hooks them)."""
        raise NotImplementedError

    def text_attention(self) -> Optional[str]:
        """The language model's attention implementation ("sdpa", "eager", ...)."""
        raise NotImplementedError

    def min_intra_llm_layer(self) -> int:
        """Smallest allowed `intra_llm_layer` (Qwen3-VL: its deepstack adds visual features after early layers)."""
        return 1

    def validate_intra_llm(self) -> None:
        if self.config.intra_llm_layer is None:
            return
        k, depth, low = self.config.intra_llm_layer, len(self.text_layers()), self.min_intra_llm_layer()
        if not low <= k < depth:
            raise ValueError(f"intra_llm_layer={k} does not fit this model: its language model has {depth} decoder "
                             f"layers, so allowed values are {low}..{depth - 1} (layer K-1 scores, layers K.. see the "
                             "reduced sequence)")
        impl = self.text_attention()
        if impl not in SUPPORTED_IMPLEMENTATIONS:
            raise ValueError(f"intra_llm_layer needs the language model on one of {list(SUPPORTED_IMPLEMENTATIONS)} "
                             f"attention; this model uses {impl!r} (load it with attn_implementation='sdpa')")

    def install_intra_llm(self) -> None:
        if self.config.intra_llm_layer is None:
            return
        self._intra = self.stage_class(self.text_layers(), self.config.intra_llm_layer, self.config.intra_llm_ratio,
                                       on_reduced=self._record_intra_llm)
        self._intra.install(self.hooks)

    def close_intra_llm(self) -> None:
        if self._intra is not None:
            self._intra.disarm()
            self._intra = None

    def _record_intra_llm(self, visual_after: List[int]) -> None:
        for report, count in zip(self.state.last, visual_after):
            report.intra_llm_tokens_after = count


class _ReduceHook:
    """A layer's pre-hook: a small object rather than a closure, so that deepcopy / pickle of the model carry it."""

    def __init__(self, stage: IntraLLMStage, first: bool) -> None:
        self.stage, self.first = stage, first

    def __call__(self, module, args, kwargs):
        return self.stage.pre_hook(module, args, kwargs, self.first)


__all__ = ["IntraLLMStage", "last_row_attention", "SCORING_IMPLEMENTATION", "SUPPORTED_IMPLEMENTATIONS"]
