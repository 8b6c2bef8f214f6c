"""`TangoConfig`: every knob of the method, validated on construction.

Defaults are the values the paper's run scripts use (see SPEC.md section 7.1). Each field carries a help
text in its metadata; a bad value raises `ValueError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

SEGMENTATIONS = ("holitom", "fastvid")
SALIENCY_SOURCES = ("auto", "global_query", "siglip_head", "attention_received")


def _help(text: str, **kwargs) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TangoConfig:
    """Settings of one pruning run.

    Args:
        retention_ratio: fraction of the video tokens kept before the LLM, in (0, 1]. 1.0 disables pruning.
        context_ratio: share of each frame's budget spent on merged context tokens (the rest on salient ones).
        similarity_threshold: cosine threshold of the temporal segmentation. `None` picks the paper's rule:
            0.65 when retention_ratio <= 0.1, else 0.8.
        static_threshold: cosine threshold above which a token counts as static over a whole segment. The
            reference never passes its configured threshold to this test, so it is always 0.8 there.
        alpha: candidate expansion of the salient pick (top ``int(alpha * k)`` by score, then k clusters).
        beta: floor of the anchor's weight when a context cluster is merged into it.
        num_neighbors: k of the DPC-KNN local density.
        segmentation: "holitom" (dynamic programme over static tokens) or "fastvid" (cuts at the least
            similar frame pairs).
        fastvid_min_cuts: the fastvid cut count ``c`` (``c - 1`` lowest similarities are always cut).
        base_time / base_space: ST-RoPE frequency bases of the time and the two spatial sections.
        sink_positions: per-frame grid indices whose saliency is zeroed (attention sinks). `None` lets the
            model adapter use its preset; an explicit list (also empty) overrides it.
        strategy: name of a registered pruning strategy ("tango", "topk", "uniform", ...).
        saliency_source: where the attention signal comes from ("auto" lets the adapter decide).
        siglip_head_path: local folder of a SigLIP checkpoint whose attention-pooling head scores LLaVA-OV
            frames (saliency_source="siglip_head").
        prune_images: also prune still images, each as a single-frame video (T=1, keeps ceil(L * r) tokens).
            Qwen-VL: the whole image grid. LLaVA-OV: the base-resolution grid of each anyres image; its high-res
            crops and their row newlines pass through unpruned.
        reference_merge_order: write merged context features the way the paper's code does. Its context merge
            computes each anchor's merged vector but stores it on the anchors taken in density order, so merged
            vectors land on other anchors' positions. Off by default (each anchor keeps its own merge); on to
            reproduce the paper's numbers. The kept positions are the same either way.
        max_block_elements: memory bound of the blocked distance computations (elements of one block).
        intra_llm_layer: K of the intra-LLM stage of the LLaVA-Video runs (SPEC section 6), or None (off, the
            default). Layers 0..K-1 see the whole prompt; before layer K each video keeps the
            `round(n * intra_llm_ratio)` tokens the last prompt token attends to most in layer K-1 and the rest are
            merged into them. The reference uses K = 18 of 28. Applied in `generate` only. Must be below the
            model's depth (checked at `enable`).
        intra_llm_ratio: share of each video's tokens kept at the intra-LLM layer (reference: 0.5).

    Example:
        ```python
        >>> cfg = TangoConfig(retention_ratio=0.15)
        >>> cfg.similarity_threshold
        0.8
        ```
    """

    retention_ratio: float = _help("fraction of video tokens kept before the LLM, in (0, 1]", default=0.1)
    context_ratio: float = _help("share of each frame's budget given to merged context tokens, in [0, 1]",
                                 default=0.4)
    similarity_threshold: Optional[float] = _help(
        "segmentation threshold in [-1, 1]; None -> 0.65 if retention_ratio <= 0.1 else 0.8", default=None)
    static_threshold: float = _help("static-token cosine threshold in [-1, 1] (reference: always 0.8)",
                                    default=0.8)
    alpha: float = _help("salient candidate expansion, >= 1", default=1.5)
    beta: float = _help("minimum weight of an anchor in a context merge, in [0, 1]", default=0.6)
    num_neighbors: int = _help("k of the DPC-KNN density, >= 1", default=7)
    segmentation: str = _help("temporal segmentation: 'holitom' or 'fastvid'", default="holitom")
    fastvid_min_cuts: int = _help("fastvid: number of segments forced by the lowest similarities, >= 1", default=8)
    holitom_max_window: int = _help("holitom: longest segment in frames, >= 1", default=1024)
    base_time: float = _help("ST-RoPE base of the time section, > 1", default=10000.0)
    base_space: float = _help("ST-RoPE base of the height and width sections, > 1", default=1000.0)
    sink_positions: Optional[list] = _help("grid indices whose saliency is zeroed; None = adapter preset",
                                           default=None)
    strategy: str = _help("registered pruning strategy name", default="tango")
    saliency_source: str = _help("attention signal: " + ", ".join(SALIENCY_SOURCES), default="auto")
    siglip_head_path: Optional[str] = _help("local SigLIP checkpoint folder for the attention-pooling head",
                                            default=None)
    prune_images: bool = _help("also prune still images as single-frame videos (Qwen-VL: the whole image; "
                               "LLaVA-OV: the base-resolution grid, high-res crops unpruned)", default=False)
    reference_merge_order: bool = _help(
        "reproduce the reference's context-merge write order (merged values land on anchors in density order, "
        "not on their own anchor); the kept set is the same either way", default=False)
    max_block_elements: int = _help("elements per block of the blocked distance matrix, >= 1024",
                                    default=1 << 24)
    intra_llm_layer: Optional[int] = _help(
        "intra-LLM stage: first decoder layer that sees the reduced sequence (layer K-1 scores); None = off",
        default=None)
    intra_llm_ratio: float = _help("intra-LLM stage: share of each video's tokens kept, in (0, 1]", default=0.5)

    def __post_init__(self) -> None:
        if self.similarity_threshold is None and _is_number(self.retention_ratio):
            self.similarity_threshold = 0.65 if self.retention_ratio <= 0.1 else 0.8
        if self.sink_positions is not None:
            self.sink_positions = list(self.sink_positions)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise `ValueError` for the first field whose value is outside its allowed range."""
        _check_range("retention_ratio", self.retention_ratio, 0.0, 1.0, low_open=True)
        _check_range("context_ratio", self.context_ratio, 0.0, 1.0)
        _check_range("similarity_threshold", self.similarity_threshold, -1.0, 1.0)
        _check_range("static_threshold", self.static_threshold, -1.0, 1.0)
        _check_range("alpha", self.alpha, 1.0, math.inf)
        _check_range("beta", self.beta, 0.0, 1.0)
        _check_int("num_neighbors", self.num_neighbors, 1)
        _check_int("fastvid_min_cuts", self.fastvid_min_cuts, 1)
        _check_int("holitom_max_window", self.holitom_max_window, 1)
        _check_int("max_block_elements", self.max_block_elements, 1024)
        if self.intra_llm_layer is not None:
            _check_int("intra_llm_layer", self.intra_llm_layer, 1)
        _check_range("intra_llm_ratio", self.intra_llm_ratio, 0.0, 1.0, low_open=True)
        _check_range("base_time", self.base_time, 1.0, math.inf, low_open=True)
        _check_range("base_space", self.base_space, 1.0, math.inf, low_open=True)
        if self.segmentation not in SEGMENTATIONS:
            raise ValueError(f"segmentation={self.segmentation!r} is not supported; allowed: {list(SEGMENTATIONS)}")
        if self.saliency_source not in SALIENCY_SOURCES:
            raise ValueError(
                f"saliency_source={self.saliency_source!r} is not supported; allowed: {list(SALIENCY_SOURCES)}")
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ValueError(f"strategy={self.strategy!r} must be a non-empty strategy name")
        for name in ("prune_images", "reference_merge_order"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.sink_positions is not None:
            for p in self.sink_positions:
                if isinstance(p, bool) or not isinstance(p, int) or p < 0:
                    raise ValueError(
                        f"sink_positions={self.sink_positions!r} must hold non-negative integer grid indices; "
                        f"got {p!r}")
        if self.siglip_head_path is not None and not isinstance(self.siglip_head_path, str):
            raise ValueError(f"siglip_head_path={self.siglip_head_path!r} must be a folder path (str) or None")

    # ----------------------------------------------------------- conversions
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TangoConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TangoConfig field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TangoConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "TangoConfig":
        """A copy with some fields changed (the threshold rule is re-applied unless given)."""
        data = self.to_dict()
        if "retention_ratio" in changes and "similarity_threshold" not in changes:
            data["similarity_threshold"] = None
        data.update(changes)
        return type(self).from_dict(data)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TangoConfig":
        """The paper's settings for a model family (see `tango_plugin.presets`), with overrides."""
        from .presets import get_preset

        data = dict(get_preset(name))
        data.update(overrides)
        return cls.from_dict(data)

    @staticmethod
    def pre_llm_retention(target_ratio: float, num_layers: int, intra_llm_layer: int,
                          intra_llm_ratio: float = 0.5) -> float:
        """Pre-LLM retention that makes the layer-averaged token count equal `target_ratio` (SPEC section 6).

        `min(1, num_layers * r / (K + (num_layers - K) * p))`; the reference's run scripts print it with 6
        significant digits (r = 0.1, 28 layers, K = 18, p = 0.5 -> 0.121739, the `llava-video` preset).
        """
        _check_range("target_ratio", target_ratio, 0.0, 1.0, low_open=True)
        _check_int("num_layers", num_layers, 2)
        if isinstance(intra_llm_layer, bool) or not isinstance(intra_llm_layer, int) \
                or not 1 <= intra_llm_layer < num_layers:
            raise ValueError(f"intra_llm_layer={intra_llm_layer!r} is not allowed; expected an integer in "
                             f"[1, {num_layers - 1}] (below num_layers={num_layers})")
        _check_range("intra_llm_ratio", intra_llm_ratio, 0.0, 1.0, low_open=True)
        layers_seen = intra_llm_layer + (num_layers - intra_llm_layer) * intra_llm_ratio
        return min(1.0, num_layers * target_ratio / layers_seen)

    @staticmethod
    def help() -> dict:
        """Field name -> help text."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TangoConfig)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_range(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    bracket = "(" if low_open else "["
    allowed = f"a number in {bracket}{low}, {high}]"
    if not _is_number(value) or math.isnan(value):
        raise ValueError(f"{name}={value!r} is not allowed; expected {allowed}")
    if value < low or (low_open and value == low) or value > high:
        raise ValueError(f"{name}={value!r} is out of range; expected {allowed}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= {low}")
