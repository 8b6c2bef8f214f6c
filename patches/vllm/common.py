"""What the Tango model and processor subclasses of every family share: the per-video fields, the decision, the
exact position channels, the report.

Front end (the processor, in vLLM's API-server / `LLM` process): the request's ratio and each video's frame times
(from the video metadata vLLM decoded) become per-video fields of the request's multimodal data, and the video's
placeholder count is `settings.video_token_count`. Worker (the model): the vision tower runs once with the saliency
capture of `vision.py`, each video goes through `run_strategy` with `exact_budget=True` (the only strategy call
site, as in transformers), and exactly that many rows come back.

Position channels. For the M-RoPE families vLLM's own pruning (EVS) appends each kept token's 3-D position to its
embedding row and the model runner recomputes the positions of the whole prompt from them
(`recompute_mrope_positions`). vLLM appends them as numbers in the embedding dtype, which in bfloat16 is exact only
up to 256 (a long video's time index goes past that). Here each channel travels as two base-256 digits, exact in
bfloat16 up to 65,535, and is decoded by the subclasses' own `recompute_mrope_positions`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Dict, List, Mapping, Optional

import torch

from tango_plugin.engine.types import PrunePlan, VisualTokens
from tango_plugin.integration.adapter import preset_sink_positions
from tango_plugin.strategies import run_strategy

from .settings import (
    FIELD_RATIO,
    FIELD_SOURCE,
    FIELD_TIMES,
    TIME_SOURCES,
    ServingSettings,
    frame_times_from_metadata,
    pack_float64,
    request_ratio,
    settings_for,
    strip_knobs,
    unpack_float64,
    video_token_count,
)

#: under "vllm." so that vLLM's own log handlers and format show the plugin's lines
log = logging.getLogger("vllm.tango")
_warned: set = set()
_warn_lock = threading.Lock()


def warn_once(key: str, message: str) -> None:
    """Log a warning the first time `key` is seen in this process."""
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning("tango: %s", message)


# ============================================================================================= position channels
_DIGIT = 256


def encode_positions(positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, C) non-negative integer positions -> (N, 2 C) columns of `dtype`, two base-256 digits per channel (exact
    in bfloat16, float16 and float32)."""
    positions = positions.long()
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= _DIGIT * _DIGIT):
        raise ValueError(f"tango: M-RoPE positions {int(positions.min())}..{int(positions.max())} do not fit the "
                         f"position channels (0..{_DIGIT * _DIGIT - 1})")
    return torch.cat([positions // _DIGIT, positions % _DIGIT], dim=1).to(dtype)


def decode_positions(columns: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_positions`: (N, 2 C) -> (C, N) long (the layout vLLM's recompute takes)."""
    half = columns.shape[1] // 2
    digits = columns.float().round().long()
    return (digits[:, :half] * _DIGIT + digits[:, half:]).t()


# ============================================================================================= front end
class TangoProcessorMixin:
    """Mixed into a vLLM multimodal processor: strips the tango knobs from what the Hugging Face processor sees,
    adds the per-video fields (ratio, frame times, their source) and sizes each video's placeholders.

    Subclasses set `tango_architecture` and implement `_tango_video_tokens(out_item, ratio)` (the kept count, plus
    tokens outside the budget such as LLaVA's newline)."""

    tango_architecture: str = ""

    def tango_settings(self) -> Optional[ServingSettings]:
        cached = self.__dict__.get("_tango_settings_cache")
        if cached is None:
            cached = (settings_for(self.tango_architecture, self.info.get_hf_config()),)
            self.__dict__["_tango_settings_cache"] = cached
        return cached[0]

    def _tango_check_request(self, hf_kwargs: Mapping[str, Any]) -> Optional[float]:
        """The request's ratio, or None when the model is served without Tango (then no tango knob is allowed)."""
        settings = self.tango_settings()
        given = sorted(k for k in hf_kwargs if k.startswith("tango"))
        if settings is None:
            if given:
                raise ValueError(f"mm_processor_kwargs {given}: this model is served without Tango (its config has "
                                 "no enabled 'tango' section; give one with --hf-overrides '{\"tango\": {}}')")
            return None
        return request_ratio(settings, hf_kwargs)

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        ratio = self._tango_check_request(hf_kwargs)
        processed = super()._apply_hf_processor_main(mm_items, strip_knobs(hf_kwargs))
        if ratio is None or "video" not in mm_items:
            return processed
        settings = self.tango_settings()
        videos = mm_items["video"]
        listed = getattr(videos, "metadata", None)
        times, sources = [], []
        for i in range(len(videos)):
            frames, metadata = _frames_and_metadata(videos, i, listed)
            seconds, source = frame_times_from_metadata(metadata, frames, settings.fps)
            if seconds is None:
                warn_once("no-times", "a video came without metadata (no fps): ST-RoPE uses the frame index as "
                                      "time; give the video's metadata (fps, frames_indices) or the tango_fps knob")
            times.append(pack_float64([] if seconds is None else seconds))
            sources.append(source)
        processed[FIELD_RATIO] = torch.stack([pack_float64([ratio])] * len(videos))
        processed[FIELD_TIMES] = times
        processed[FIELD_SOURCE] = torch.tensor(sources, dtype=torch.int64)
        return processed

    def _get_cache_missing_items(self, cache, mm_data_items, mm_hashes):
        # vLLM re-parses the items missing from its processor cache from their frames alone, which drops the video
        # metadata of the families whose processor does not need it (Qwen2-VL, LLaVA-OV); the frame times need it
        is_cached, missing = super()._get_cache_missing_items(cache, mm_data_items, mm_hashes)
        videos = mm_data_items.get("video") if hasattr(mm_data_items, "get") else None
        listed = getattr(videos, "metadata", None)
        if isinstance(listed, list) and "video" in missing and hasattr(missing["video"], "metadata"):
            missing["video"].metadata = [listed[i] for i, cached in enumerate(is_cached.get("video", []))
                                         if not cached]
        return is_cached, missing

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        from vllm.multimodal.inputs import MultiModalFieldConfig

        fields = dict(super()._get_mm_fields_config(hf_inputs, strip_knobs(hf_processor_mm_kwargs)))
        for key in (FIELD_RATIO, FIELD_TIMES, FIELD_SOURCE):
            if key in hf_inputs:
                fields[key] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        return fields

    def tango_ratio_of(self, out_item) -> Optional[float]:
        """The ratio stored with one processed video (None: not a Tango request)."""
        field = out_item.get(FIELD_RATIO) if hasattr(out_item, "get") else None
        if field is None:
            return None
        return float(unpack_float64(field.data)[0])


def _frames_and_metadata(videos, index: int, listed) -> tuple:
    """(number of frames, metadata dict or None) of one video item of vLLM's parsed multimodal data (an item is the
    frames, or (frames, metadata) for the families whose processor needs the metadata)."""
    item = videos.get(index) if hasattr(videos, "get") else None
    metadata = listed[index] if isinstance(listed, list) and index < len(listed) else None
    if isinstance(item, tuple) and len(item) == 2:
        item, metadata = item[0], item[1] if item[1] is not None else metadata
    return (0 if item is None else len(item)), metadata


# ============================================================================================= worker
class VideoFields:
    """The per-video fields of one `embed_multimodal` call, by video."""

    def __init__(self, kwargs: Dict[str, Any], default_ratio: float) -> None:
        self.ratios = kwargs.pop(FIELD_RATIO, None)
        self.times = kwargs.pop(FIELD_TIMES, None)
        self.sources = kwargs.pop(FIELD_SOURCE, None)
        self.default_ratio = default_ratio

    def ratio(self, index: int) -> float:
        if self.ratios is None:  # vLLM's own profiling run (dummy videos) brings no fields
            return self.default_ratio
        return float(unpack_float64(self.ratios[index])[0])

    def frame_times(self, index: int) -> Optional[torch.Tensor]:
        if self.times is None:
            return None
        seconds = unpack_float64(self.times[index])
        return seconds if seconds.numel() else None

    def source(self, index: int) -> str:
        if self.sources is None:
            return TIME_SOURCES[2]
        return TIME_SOURCES[int(self.sources[index])]


class TangoModelMixin:
    """Mixed into a vLLM model class: reads the serving settings at construction and decides each video."""

    tango_architecture: str = ""
    tango: Optional[ServingSettings] = None

    @classmethod
    def tango_settings_from(cls, vllm_config) -> Optional[ServingSettings]:
        """Settings of this model (None: served as stock vLLM), with the checks that need the whole vLLM config."""
        settings = settings_for(cls.tango_architecture, vllm_config.model_config.hf_config)
        if settings is None:
            return None
        mm = vllm_config.model_config.multimodal_config
        if mm is not None and mm.video_pruning_rate:
            raise ValueError(f"tango and --video-pruning-rate={mm.video_pruning_rate} ({mm.video_pruning_method}) "
                             "are two pruning methods for the same videos; use one of them")
        return settings

    def embed_multimodal(self, **kwargs: object):
        """vLLM's entry point for the media of a batch: with Tango on, images through `_tango_images` (unpruned)
        and videos through `_tango_videos` (pruned), in the order vLLM parsed them."""
        if self.tango is None:
            return super().embed_multimodal(**kwargs)
        fields = VideoFields(kwargs, self.tango.config.retention_ratio)
        out: List[torch.Tensor] = []
        for modality, media_input in self._parse_and_validate_multimodal_inputs(**kwargs).items():
            if media_input is None:
                continue
            if modality.rstrip("s") == "image":  # Qwen2-VL names them "images" / "videos"
                out.extend(self._tango_images(media_input))
            else:
                out.extend(self._tango_videos(media_input, fields))
        return tuple(out)

    def tango_log_settings(self) -> None:
        cfg = self.tango.config
        log.info("tango: pruning on for %s: strategy %s, retention ratio %s (per request: mm_processor_kwargs "
                 "tango_ratio), exactly T * max(1, ceil(L * r)) tokens per video, saliency %s",
                 self.tango_architecture, cfg.strategy, cfg.retention_ratio,
                 "global_query" if cfg.saliency_source == "auto" else cfg.saliency_source)

    def tango_saliency_source(self) -> str:
        source = self.tango.config.saliency_source
        return "global_query" if source == "auto" else source

    def tango_decide(self, features: torch.Tensor, saliency: Optional[torch.Tensor], grid_hw, ratio: float,
                     timestamps: Optional[torch.Tensor], times_source: str, preset_grid: Optional[int] = None,
                     extra_tokens: int = 0, saliency_note: str = "") -> PrunePlan:
        """Run the configured strategy on one video's (T, L, D) features and return its plan, which keeps exactly
        `video_token_count(T, L, ratio)` tokens (checked: a plan of another size would misalign the prompt)."""
        started = time.perf_counter()
        T, L, _ = features.shape
        expected = video_token_count(T, L, ratio)
        config = self.tango.config_for(ratio)
        note = saliency_note
        if ratio >= 1.0:
            plan, sinks = PrunePlan.keep_all(features), ()
            note = note or "ratio 1.0: every token kept"
        else:
            if saliency is None:
                saliency = torch.zeros(T, L, dtype=torch.float32, device=features.device)
            sinks, sink_note = preset_sink_positions(config, L, self.tango.preset, preset_grid)
            if sink_note:
                warn_once("sinks-" + str(L), sink_note)
                note = "; ".join(x for x in (note, sink_note) if x)
            tokens = VisualTokens(features=features, saliency=saliency, grid_hw=tuple(grid_hw),
                                  timestamps=timestamps, sink_positions=sinks,
                                  frame_embeddings=features.float().mean(1) if config.segmentation == "fastvid"
                                  else None)
            plan = run_strategy(tokens, config)
        kept = int(plan.kept_indices.numel())
        if kept != expected:
            raise RuntimeError(f"tango: strategy {config.strategy!r} kept {kept} tokens of a {T} x {L} video at "
                               f"ratio {ratio}; the prompt holds {expected} placeholders for it")
        seconds = time.perf_counter() - started
        self._tango_record(features, saliency, grid_hw, timestamps, times_source, ratio, config, plan, sinks,
                           extra_tokens, seconds, note)
        return plan

    # ------------------------------------------------------------------------------------------- report
    def _tango_record(self, features, saliency, grid_hw, timestamps, times_source, ratio, config, plan, sinks,
                      extra_tokens, seconds, note) -> None:
        settings = self.tango
        T, L, _ = features.shape
        kept = plan.kept_indices.detach().cpu()
        digest = hashlib.sha1(kept.numpy().tobytes()).hexdigest()[:16]
        rank = _tp_rank()
        log.info("tango: video of %d x %d tokens -> %d kept%s (ratio %s, %s, times: %s, %.1f ms, rank %d)", T, L,
                 kept.numel(), f" + {extra_tokens} newline" if extra_tokens else "", ratio, config.strategy,
                 times_source, 1000 * seconds, rank)
        record = {
            "architecture": settings.architecture, "rank": rank, "pid": os.getpid(), "frames": T,
            "grid": list(grid_hw), "tokens_before": T * L + extra_tokens,
            "tokens_after": int(kept.numel()) + extra_tokens,
            "kept_by_strategy": int(kept.numel()), "ratio": ratio, "strategy": config.strategy,
            "saliency_source": self.tango_saliency_source() if ratio < 1.0 else "none",
            "video_timestamps": None if timestamps is None else [float(x) for x in timestamps],
            "timestamps_source": times_source, "kept_sha1": digest, "seconds": seconds,
            "pruned": ratio < 1.0, "note": note}
        if settings.report:
            with _report_lock, open(settings.report, "a") as f:
                f.write(json.dumps(record) + "\n")
        if settings.capture:
            os.makedirs(settings.capture, exist_ok=True)
            name = f"{os.getpid()}-{_next_capture()}-rank{rank}.pt"
            torch.save({"features": features.detach().cpu(),
                        "saliency": None if saliency is None else saliency.detach().cpu(),
                        "grid_hw": tuple(grid_hw), "timestamps": timestamps, "sink_positions": tuple(sinks),
                        "config": config.to_dict(), "kept_indices": kept,
                        "plan_features": plan.features.detach().cpu(), "record": record},
                       os.path.join(settings.capture, name))


_report_lock = threading.Lock()
_capture_count = [0]


def _next_capture() -> int:
    with _report_lock:
        _capture_count[0] += 1
        return _capture_count[0]


def _tp_rank() -> int:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return int(get_tensor_model_parallel_rank())
    except Exception:  # not inside an initialised vLLM worker (unit tests)
        return 0


__all__ = ["TangoProcessorMixin", "TangoModelMixin", "VideoFields", "encode_positions", "decode_positions",
           "warn_once", "log"]
