"""What the vLLM plugin reads from a model's `tango` section and from a request, and the one count both sides use.

A served model prunes when its Hugging Face config has a `tango` section (what `save_pretrained` of an enabled model
writes, or `--hf-overrides '{"tango": {...}}'`) with the same knobs as every integration (`tango_plugin.knobs`).
A request may change the ratio for its own videos through `mm_processor_kwargs`: `tango_ratio` (a number in (0, 1])
or `tango` (false: this request's videos are not pruned). The count of placeholder tokens a video gets is decided in
the front-end process before the vision tower runs, and the model in the worker process must return exactly that
many rows: both sides call `video_token_count` with the same float, which travels as its float64 bits
(`pack_float64`), so no rounding on the way can make them disagree (docs/vllm.md, "The count").

This module imports neither vLLM nor transformers.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from tango_plugin.engine.budgets import exact_keep_count
from tango_plugin.knobs import SECTION, config_from_knobs, is_knob, parse_bool, parse_field

#: vLLM architecture name -> (model family of tango_plugin.model_zoo, its preset)
SUPPORTED_ARCHITECTURES: Dict[str, Tuple[str, str]] = {
    "Qwen2VLForConditionalGeneration": ("qwen2_vl", "qwen2-vl"),
    "Qwen2_5_VLForConditionalGeneration": ("qwen2_5_vl", "qwen2.5-vl"),
    "Qwen3VLForConditionalGeneration": ("qwen3_vl", "qwen3-vl"),
    "Qwen3VLMoeForConditionalGeneration": ("qwen3_vl_moe", "qwen3-vl"),
    "LlavaOnevisionForConditionalGeneration": ("llava_onevision", "llava-onevision"),
}
#: knobs a request may give in `mm_processor_kwargs`
REQUEST_KNOBS = ("tango", "tango_ratio")
#: vLLM releases the plugin is tested with (>= first, < last)
TESTED_VLLM = ((0, 32), (0, 34))

#: per-video fields the processor adds to a request's multimodal data and the model reads back
FIELD_RATIO = "tango_ratio_bits"
FIELD_TIMES = "tango_frame_time_bits"
FIELD_SOURCE = "tango_times_source"
#: where a video's frame times came from (FIELD_SOURCE values)
TIME_SOURCES = ("video metadata (frames_indices / fps)", "video metadata (fps, frames assumed consecutive)",
                "none: frame index")


@dataclass(frozen=True)
class ServingSettings:
    """Tango for one served model, from its `tango` section.

    Args:
        architecture: the vLLM architecture name.
        family: the model family (`tango_plugin.model_zoo`) whose rules apply (frame times, sink positions).
        knobs: the section's knobs, as given (a request's ratio is applied on top of them).
        config: the resulting `TangoConfig` (always with `exact_budget=True`: the count must be known in advance).
        pool_mode: LLaVA-OneVision's frame pooling ("bilinear", or "average" for LLaVA-Video checkpoints).
        fps: the `tango_fps` knob (frame times when a video comes without metadata), or None.
        report: JSON-lines file the worker appends one record per pruned video to, or None.
        capture: folder the worker saves each video's engine inputs and plan into (parity checks), or None.
    """

    architecture: str
    family: str
    knobs: Mapping[str, Any] = field(hash=False, compare=False)
    config: Any = field(hash=False, compare=False)
    pool_mode: str = "bilinear"
    fps: Optional[float] = None
    report: Optional[str] = None
    capture: Optional[str] = None

    @property
    def preset(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture][1]

    def config_for(self, ratio: float):
        """The config of a request whose ratio is `ratio` (the section's own config when it is the same)."""
        if ratio == self.config.retention_ratio:
            return self.config
        return _config_with_ratio(json.dumps(dict(self.knobs), sort_keys=True), self.preset, ratio)


@functools.lru_cache(maxsize=64)
def _config_with_ratio(knobs_json: str, preset: str, ratio: float):
    knobs = {k: v for k, v in json.loads(knobs_json).items() if k not in ("tango_ratio", "tango_retention_ratio")}
    knobs["tango_ratio"] = ratio
    config, _, _ = config_from_knobs(knobs, default_preset=preset)
    return config.replace(exact_budget=True)


def section_of(hf_config: Any) -> Optional[Mapping[str, Any]]:
    """The `tango` section of a model config (a dict), or None when there is none."""
    section = getattr(hf_config, SECTION, None)
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ValueError(f"the model config's {SECTION!r} section is {section!r}; expected an object of tango knobs "
                         "(e.g. {\"tango_ratio\": 0.1})")
    return section


#: knobs the other integrations accept that have no meaning in vLLM, and why
_REFUSED = {
    "intra_llm_layer": "the intra-LLM stage is not supported in vLLM (set tango_intra_llm_layer=null)",
    "prune_images": "still images are not pruned in vLLM (set tango_prune_images=false)",
    "saliency_source": "saliency_source='siglip_head' is not supported in vLLM; use 'global_query' (the default) or "
                       "'attention_received'",
}


def settings_for(architecture: str, hf_config: Any) -> Optional[ServingSettings]:
    """The serving settings of a model, or None when its config has no `tango` section or turns it off.

    Raises:
        ValueError: the section is on for an architecture the plugin does not support (naming the supported ones),
            a knob is unknown or out of range (the same message as every integration), or it asks for something
            vLLM cannot do here (the intra-LLM stage, image pruning, the SigLIP-head saliency, `exact_budget=false`,
            LLaVA's per-row newlines).
    """
    section = section_of(hf_config)
    if section is None:
        return None
    knobs = dict(section)
    if architecture not in SUPPORTED_ARCHITECTURES:
        enabled = parse_bool(SECTION, knobs.get(SECTION, True))
        if not enabled:
            return None
        raise ValueError(f"the model config has a {SECTION!r} section, but the tango vLLM plugin does not support "
                         f"the architecture {architecture!r}; supported: {sorted(SUPPORTED_ARCHITECTURES)}. Remove "
                         f"the section (or set \"{SECTION}\": false) to serve it unpruned.")
    family, preset = SUPPORTED_ARCHITECTURES[architecture]
    config, options, extras = config_from_knobs(knobs, default_preset=preset)
    if not extras["enabled"]:
        return None
    if config.intra_llm_layer is not None:
        raise ValueError(f"tango_intra_llm_layer={config.intra_llm_layer!r}: {_REFUSED['intra_llm_layer']}")
    if config.prune_images:
        raise ValueError(f"tango_prune_images=True: {_REFUSED['prune_images']}")
    if config.saliency_source == "siglip_head":
        raise ValueError(f"tango_saliency_source='siglip_head': {_REFUSED['saliency_source']}")
    if "tango_exact_budget" in knobs and not config.exact_budget:
        raise ValueError("tango_exact_budget=False is not allowed in vLLM: the number of placeholder tokens of a "
                         "video is fixed before the vision tower runs, so every strategy keeps exactly "
                         "T * max(1, ceil(L * r)) tokens (leave the knob out)")
    if options.get("newline", "one_token") != "one_token":
        raise ValueError("tango_newline='grid' is not supported in vLLM: its newline count depends on the kept "
                         "tokens, which the placeholder count cannot know in advance")
    if options.get("image_highres", "keep") != "keep":
        raise ValueError(f"tango_image_highres={options['image_highres']!r}: {_REFUSED['prune_images']}")
    pool_mode = options.get("pool_mode", "bilinear")
    if pool_mode != "bilinear" and family != "llava_onevision":
        raise ValueError(f"tango_pool_mode={pool_mode!r} applies to LLaVA-OneVision only, not to {architecture}")
    return ServingSettings(architecture=architecture, family=family, knobs=knobs,
                           config=config.replace(exact_budget=True), pool_mode=pool_mode, fps=options.get("fps"),
                           report=extras["report"], capture=extras.get("capture"))


def request_ratio(settings: ServingSettings, mm_kwargs: Mapping[str, Any]) -> float:
    """The retention ratio of one request: its `tango_ratio`, 1.0 when it says `tango=false`, else the section's.

    Raises:
        ValueError: another `tango_*` knob (only `tango` and `tango_ratio` are per request), or a bad value.
    """
    knobs = {k: v for k, v in mm_kwargs.items() if is_knob(k)}
    unknown = sorted(set(knobs) - set(REQUEST_KNOBS))
    if unknown:
        raise ValueError(f"mm_processor_kwargs {unknown} are not per-request knobs; a request may give "
                         f"{list(REQUEST_KNOBS)} (the other tango knobs belong in the model's tango section)")
    if "tango" in knobs and not parse_bool("tango", knobs["tango"]):
        return 1.0
    if "tango_ratio" not in knobs:
        return settings.config.retention_ratio
    ratio = parse_field("tango_ratio", "retention_ratio", knobs["tango_ratio"])
    if not (isinstance(ratio, float) and 0.0 < ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"tango_ratio={knobs['tango_ratio']!r} is out of range; expected a number in (0.0, 1.0]")
    return ratio


def strip_knobs(mm_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """`mm_kwargs` without the tango knobs (what the Hugging Face processor may see)."""
    return {k: v for k, v in mm_kwargs.items() if not is_knob(k)}


def video_token_count(num_frames: int, tokens_per_frame: int, ratio: float) -> int:
    """Tokens a video keeps: `exact_keep_count` (T * max(1, ceil(L * r)); T * L at r = 1). The processor sizes the
    placeholders with it and the model returns exactly that many rows."""
    return exact_keep_count(num_frames, tokens_per_frame, ratio)


def pack_float64(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Floats as the int64 view of their float64 bits: no cast on the way to the worker can round them."""
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1).view(torch.int64).clone()


def unpack_float64(bits: torch.Tensor) -> torch.Tensor:
    return bits.detach().to("cpu", torch.int64).reshape(-1).view(torch.float64)


def frame_times_from_metadata(metadata: Optional[Mapping[str, Any]], num_frames: int,
                              fps_knob: Optional[float]) -> Tuple[Optional[torch.Tensor], int]:
    """(seconds of each sampled frame (float64) or None, index into TIME_SOURCES) from vLLM's video metadata.

    `frames_indices / fps` when both are known (the exact times, as every other route passes them), consecutive
    frames at `fps` when only the rate is known, the `tango_fps` knob when there is no metadata, else None.
    """
    fps = None if metadata is None else metadata.get("fps")
    indices = None if metadata is None else metadata.get("frames_indices")
    if fps is not None and float(fps) > 0:
        if indices is not None and len(indices) == num_frames:
            return torch.as_tensor(list(indices), dtype=torch.float64) / float(fps), 0
        return torch.arange(num_frames, dtype=torch.float64) / float(fps), 1
    if fps_knob is not None:
        return torch.arange(num_frames, dtype=torch.float64) / float(fps_knob), 1
    return None, 2


__all__ = ["SUPPORTED_ARCHITECTURES", "REQUEST_KNOBS", "TESTED_VLLM", "ServingSettings", "settings_for",
           "section_of", "request_ratio", "strip_knobs", "video_token_count", "pack_float64", "unpack_float64",
           "frame_times_from_metadata", "FIELD_RATIO", "FIELD_TIMES", "FIELD_SOURCE", "TIME_SOURCES"]
