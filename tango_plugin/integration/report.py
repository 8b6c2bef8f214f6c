"""Per-handle state and reports: what each call kept, typed and resettable."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from ..engine.types import PrunePlan, VisualTokens
from .threads import REPORT_LOCK


@dataclass
class SampleReport:
    """What one batch row of the last call went through.

    Args:
        sample: row index in the batch.
        videos: number of videos in the row.
        video_indices: positions of the row's videos among the call's videos, in the order the call passed them
            (the processor's order), so a harness pairs each video with its row without counting.
        visual_tokens_before: video placeholder tokens the unpruned model would have fed to the LLM.
        visual_tokens_after: video tokens the LLM really received (kept tokens plus newline tokens, if any).
        kept_by_strategy: tokens the strategy kept (`PrunePlan.kept_indices`), without newline tokens.
        ratio_kept: visual_tokens_after / visual_tokens_before (1.0 when nothing was pruned).
        saliency_source: the signal the strategy ranked tokens by ("none" when no saliency was needed).
        prune_seconds: time of saliency hooks, strategy and splice attributed to this row (vision tower excluded).
        saliency_seconds: the part of `prune_seconds` spent in the saliency hooks (they run inside the vision
            tower's forward), shared between the call's items as the rest of the shared time is.
        strategy_seconds: the part of `prune_seconds` spent in this row's strategy calls and replacements.
        splice_seconds: the part of `prune_seconds` spent building the LLM's inputs around the kept tokens (ids,
            embeddings, positions, masks), shared between the call's items; None for an adapter that does not time
            it apart from the strategy (the `llava` adapter).
        pruned: False when this row was passed through unchanged.
        note: why a row was not pruned, or other facts worth knowing (e.g. sink positions not applied).
        images: number of still images in the row pruned as single-frame videos (`prune_images=True`; 0 otherwise).
        image_tokens_before: image placeholder tokens of those images in the unpruned input.
        image_tokens_after: image tokens the LLM really received (not counted in `visual_tokens_*`).
        intra_llm_tokens_after: video tokens left after the intra-LLM stage (`intra_llm_layer`), newline tokens
            included; None when that stage did not run on this call.
        video_timestamps: per video of the row, the seconds ST-RoPE used for each engine frame (Qwen: one per
            temporal patch), or None when there were none (the frame index was used).
        timestamps_source: where those times came from ("tango_video_timestamps (per call)", "video_timestamps
            option", "fps option", "second_per_grid_ts (processor)", "none: frame index").
    """

    sample: int
    videos: int = 0
    video_indices: List[int] = field(default_factory=list)
    visual_tokens_before: int = 0
    visual_tokens_after: int = 0
    kept_by_strategy: int = 0
    ratio_kept: float = 1.0
    saliency_source: str = "none"
    prune_seconds: float = 0.0
    saliency_seconds: float = 0.0
    strategy_seconds: float = 0.0
    splice_seconds: Optional[float] = None
    pruned: bool = False
    note: str = ""
    images: int = 0
    image_tokens_before: int = 0
    image_tokens_after: int = 0
    intra_llm_tokens_after: Optional[int] = None
    video_timestamps: List[Optional[List[float]]] = field(default_factory=list)
    timestamps_source: str = ""


@dataclass
class RunState:
    """Per-handle state: the rows of the last pruned call plus running totals. `reset()` clears it."""

    calls: int = 0
    pruned_calls: int = 0
    last: List[SampleReport] = field(default_factory=list)
    total_before: int = 0
    total_after: int = 0
    total_prune_seconds: float = 0.0
    warned: set = field(default_factory=set)
    #: strategy calls recorded since enable / reset (`record_plans=True` only)
    plans: List["PlanRecord"] = field(default_factory=list)
    record_plans: bool = False
    observers: List[Callable] = field(default_factory=list)
    #: the last pruned call's layout: padding side and, per row, the unpruned positions the LLM saw, in order
    layout: Optional[dict] = None

    def reset(self) -> None:
        self.calls = self.pruned_calls = self.total_before = self.total_after = 0
        self.total_prune_seconds = 0.0
        self.last = []
        self.plans = []

    def observe(self, record: "PlanRecord") -> None:
        """A strategy call happened: keep it (`record_plans`) and tell the observers (`on_plan`)."""
        if self.record_plans:
            self.plans.append(record)
        for fn in self.observers:
            fn(record)

    def record(self, rows: List[SampleReport]) -> None:
        with REPORT_LOCK:  # calls from several threads add up (integration/threads.py)
            self.pruned_calls += 1
            self.last = rows
            self.total_before += sum(r.visual_tokens_before for r in rows)
            self.total_after += sum(r.visual_tokens_after for r in rows)
            self.total_prune_seconds += sum(r.prune_seconds for r in rows)

    def count_call(self) -> None:
        """A call the user made (not the model's own inner calls)."""
        with REPORT_LOCK:
            self.calls += 1

    def warn_once(self, key: str, message: str) -> None:
        """Warn the first time `key` happens on this handle (skipped pruning is never silent, nor repeated)."""
        if key not in self.warned:
            self.warned.add(key)
            warnings.warn(f"tango_plugin: {message}", stacklevel=4)


@dataclass
class PlanRecord:
    """One strategy call of a patched model call, as recorded with `enable(..., record_plans=True)`.

    Args:
        call: index of the model call (counted from `enable` / `reset`) that made it.
        kind: "video" or "image".
        index: the video's (or image's) index among the call's videos (images).
        row: the batch row it belongs to.
        part: which grid of the item (0; LLaVA-OV images with `image_highres="prune"` have a second one).
        tokens: the `VisualTokens` the strategy got (features, saliency, grid, timestamps, sink positions).
        plan: the `PrunePlan` it returned.
    """

    call: int
    kind: str
    index: int
    row: int
    part: int
    tokens: VisualTokens
    plan: PrunePlan


#: the observer type of `enable(..., on_plan=...)`
PlanObserver = Callable[[PlanRecord], Any]

__all__ = ["SampleReport", "RunState", "PlanRecord", "PlanObserver"]
