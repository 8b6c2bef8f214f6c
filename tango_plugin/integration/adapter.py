"""The model-adapter interface and its registry (keyed by `config.model_type`).

An adapter knows one model family: where its video tokens are, their grid, how to get the saliency signal and how
to splice the kept tokens back into the LLM input. `tango_plugin.enable` picks the adapter registered for
`model.config.model_type`. The built-in families register themselves (`tango_plugin.model_zoo`, lazily, as
``"module:Class"`` strings, so no transformers import happens until a model is enabled); other packages add theirs
with `register_adapter` or through the `tango_plugin.adapters` entry-point group. docs/adapters.md explains how to
write one.

Example:
    ```python
    >>> import tango_plugin as tango
    >>> @tango.register_adapter("my_model_type")
    ... class MyAdapter(tango.ModelAdapter):
    ...     def forward(self, original, args, kwargs):
    ...         return original(*args, **kwargs)
    ```
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type

import torch

from ..engine.types import PrunePlan
from ..presets import get_preset
from ..registry import Registry
from ..strategies import get_strategy
from .generation import cache_of
from .hooks import HookRegistry
from .threads import per_thread
from .video_io import is_video_metadata, timestamps_from_metadata

ENTRY_POINT_GROUP = "tango_plugin.adapters"


class CallInputs(Mapping):
    """One patched call's inputs, as the stages and the model families read them below the wrapper.

    The model's own keyword arguments (positional ones named by the wrapper) are a read-only mapping: they are the
    model's signature, owned by transformers, and each family reads its own part of it by name (pixels, grids,
    processor outputs). What Tango itself reads is typed: `input_ids`, `attention_mask`, `cache` and
    `video_timestamps`, the per-call ``tango_video_timestamps`` (taken out of the model's arguments here, so no stage
    has to remember to drop it). `model_kwargs()` is a fresh dict to call or rewrite the model with.
    """

    def __init__(self, kwargs: Mapping) -> None:
        model = dict(kwargs)
        self.video_timestamps: Any = model.pop("tango_video_timestamps", None)
        self._model = model

    def __getitem__(self, name: str) -> Any:
        return self._model[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._model)

    def __len__(self) -> int:
        return len(self._model)

    def __repr__(self) -> str:
        return f"CallInputs({sorted(self._model)}, video_timestamps={self.video_timestamps is not None})"

    @property
    def input_ids(self) -> Optional[torch.Tensor]:
        return self._model.get("input_ids")

    @property
    def attention_mask(self) -> Optional[torch.Tensor]:
        return self._model.get("attention_mask")

    @property
    def cache(self) -> Any:
        """`past_key_values` (or `cache`, for the models that name it so), or None."""
        return cache_of(self._model)

    def model_kwargs(self) -> dict:
        """A fresh dict of the model's own keyword arguments (``tango_video_timestamps`` not among them)."""
        return dict(self._model)


class ModelAdapter:
    """Base class of model adapters: the per-instance logic behind `tango_plugin.enable`.

    `enable` builds one adapter per patched model, calls `validate()` (a config that cannot fit the model raises
    `ValueError` there), then routes the model's `forward` and `generate` through `forward()` / `generate()`.
    The defaults call the original method unchanged, so a subclass overrides only what it prunes.

    Args:
        model: the top-level model (e.g. `...ForConditionalGeneration`), already unwrapped from PEFT.
        config: the `TangoConfig` of this handle.
        state: the handle's `RunState`, where the adapter records what it kept (`integration.report`).
        hooks: the handle's `HookRegistry`; everything the adapter attaches to the model goes through it, so that
            `handle.hooks()` lists it and `handle.remove()` takes it off.
        options: adapter-specific options passed to `enable(model, config, **options)`.

    Subclasses that leave a method of `required_methods` unimplemented are refused at registration.
    """

    #: the `config.model_type` this class is registered under (set by `register_adapter`)
    model_type: str = ""
    #: saliency sources this adapter can compute ("auto" is always accepted)
    saliency_sources: Tuple[str, ...] = ("global_query",)
    #: adapter options accepted by `__init__` (name -> help text); anything else is a `ValueError`
    options_help: Dict[str, str] = {}
    #: methods a concrete subclass must override (checked by `register_adapter`)
    required_methods: Tuple[str, ...] = ()
    #: preset whose attention-sink positions apply (docs/algorithm.md §1.4), and the tokens per frame of the grid
    #: they were written for (None: any grid)
    preset_name: str = ""
    preset_grid_tokens: Optional[int] = None

    def __init__(self, model: Any, config: Any, state: Any = None, hooks: Optional[HookRegistry] = None,
                 **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options_help))
        if unknown:
            allowed = ", ".join(f"{k} ({v})" for k, v in self.options_help.items()) or "none"
            raise ValueError(f"{type(self).__name__} got unknown option(s) {unknown}; allowed options: {allowed}")
        self.model = model
        self.config = config
        self.state = state
        self.hooks = hooks if hooks is not None else HookRegistry(model)
        self.options = dict(options)

    @classmethod
    def required_names(cls) -> Tuple[str, ...]:
        """The methods this class must implement: `required_methods` (a base may add some by its flags)."""
        return tuple(cls.required_methods)

    @classmethod
    def missing_methods(cls) -> List[str]:
        """`required_names()` this class still inherits unimplemented from the base that declares them."""
        missing = []
        for name in cls.required_names():
            impl = getattr(cls, name, None)
            if impl is None or getattr(impl, "__isabstractmethod__", False) or getattr(
                    getattr(impl, "fget", impl), "_tango_required", False):
                missing.append(name)
        return missing

    # ---------------------------------------------------------------------------- fine-tuning (docs/training.md)
    @classmethod
    def language_model_modules(cls, model: Any) -> Tuple[List[Any], List[Any]]:
        """(modules holding the language model, vision-side modules inside them): where LoRA on the LLM only may go.

        The default is the transformers convention, `model.get_decoder()` with nothing inside it to leave out.
        """
        return [model.get_decoder()], []

    @classmethod
    def projector_modules(cls, model: Any) -> List[Any]:
        """The modules that map vision features into the LLM's space (optionally trained with the LLM)."""
        return []

    # -------------------------------------------------------------------------------------------- lifecycle
    def validate(self) -> None:
        """Raise `ValueError` when `self.config` / options cannot apply to `self.model` (called by `enable`)."""
        source = self.config.saliency_source
        if source != "auto" and source not in self.saliency_sources:
            raise ValueError(f"saliency_source={source!r} is not supported by {type(self).__name__}; "
                             f"supported: {['auto', *self.saliency_sources]}")
        get_strategy(self.config.strategy)  # an unknown strategy fails at enable, not at the first call
        fps = self.options.get("fps")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf):
            raise ValueError(f"fps={fps!r} is not allowed; expected a positive, finite number (frames per second of "
                             "the sampled frames)")

    def install(self) -> None:
        """Attach what the adapter needs on the model through `self.hooks` (called by `enable` after `validate`)."""

    def close(self) -> None:
        """Release whatever the adapter holds (called by `TangoHandle.remove`, after the hooks came off)."""

    def sink_positions(self, tokens_per_frame: int, preset: Optional[Tuple[str, Optional[int]]] = None
                       ) -> Tuple[Tuple[int, ...], str]:
        """Sink positions for a frame of `tokens_per_frame` tokens, and a note when the preset's were not applied
        (`preset_sink_positions` with this class's `preset_name` / `preset_grid_tokens` unless `preset` names
        (name, grid tokens)); the note is also a one-time warning of the handle."""
        name, grid = preset if preset is not None else (self.preset_name, self.preset_grid_tokens)
        values, note = preset_sink_positions(self.config, tokens_per_frame, name, grid)
        if note:
            self.state.warn_once("sinks-" + str(tokens_per_frame), note)
        return values, note

    # ------------------------------------------------------------------------------------------ video timestamps
    def _given_video_timestamps(self, index: int, inputs: CallInputs) -> Optional[torch.Tensor]:
        """`given_timestamps` with the call's per-call value."""
        return self.given_timestamps(index, inputs.video_timestamps)

    def given_timestamps(self, index: int, per_call: Any) -> Optional[torch.Tensor]:
        """The seconds given for video `index`, flat float64 (the paper interpolates frame times in float64):
        `per_call` (a call's `tango_video_timestamps`) first, then the `video_timestamps` option. Either is one
        video's times (a tensor, a list of numbers, or video metadata: `frames_indices / fps`) for every video, or
        a list with one such entry per video."""
        given = per_call
        if given is None:
            given = self.options.get("video_timestamps")
        if given is None:
            return None
        one = is_video_metadata(given) or (isinstance(given, (list, tuple)) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in given))
        if isinstance(given, (list, tuple)) and not one:
            if index >= len(given):
                raise ValueError(f"video_timestamps has {len(given)} entries, but this call has a video {index}: "
                                 "give one entry per video of the call (in placeholder order)")
            given = given[index]
        if is_video_metadata(given):
            return timestamps_from_metadata(given)
        return torch.as_tensor(given, dtype=torch.float64).flatten()

    def timestamps_source(self, inputs: CallInputs) -> str:
        """Where the frame times of this call come from (for the report)."""
        return self.timestamps_source_of(inputs.video_timestamps)

    def timestamps_source_of(self, per_call: Any) -> str:
        """`timestamps_source` for a call whose per-call `tango_video_timestamps` is `per_call`."""
        if per_call is not None:
            return "tango_video_timestamps (per call)"
        if self.options.get("video_timestamps") is not None:
            return "video_timestamps option"
        if self.options.get("fps") is not None:
            return "fps option"
        return "none: frame index"

    #: the one-time warning when a pruned video has no time source (ST-RoPE then uses the frame index)
    missing_timestamps_note = ("no video timestamps (no fps or video_timestamps): ST-RoPE uses the frame index "
                               "0..T-1 as time; pass tango_video_timestamps= (seconds, or the video metadata) to "
                               "generate / forward, or fps= / video_timestamps= to tango.enable")

    def warn_missing_timestamps(self) -> None:
        """Say once per handle that a video is pruned without frame times (call it when the engine will run)."""
        self.state.warn_once("timestamps", self.missing_timestamps_note)

    def video_timestamps(self, index: int, num_frames: int, inputs: CallInputs) -> Optional[torch.Tensor]:
        """(num_frames,) seconds of the frames the engine sees for video `index`, or None (no time source).

        Default (one engine frame per sampled frame): the given video timestamps, else frame k at k / `fps`.
        """
        return self.frame_times(index, num_frames, inputs.video_timestamps)

    def frame_times(self, index: int, num_frames: int, per_call: Any) -> Optional[torch.Tensor]:
        """`video_timestamps` for a call whose per-call `tango_video_timestamps` is `per_call`."""
        ts = self.given_timestamps(index, per_call)
        if ts is not None:
            if ts.numel() != num_frames:
                raise ValueError(f"video_timestamps for video {index} has {ts.numel()} values; the video has "
                                 f"{num_frames} frames")
            return ts
        fps = self.options.get("fps")
        if fps is not None:
            return torch.arange(num_frames, dtype=torch.float64) / float(fps)
        return None

    def saliency_source_name(self) -> str:
        """The saliency source actually used ("auto" resolved)."""
        source = self.config.saliency_source
        return self.saliency_sources[0] if source == "auto" else source

    # -------------------------------------------------------------------------------------- patched methods
    #: > 0 while this thread's own call of the original method runs (its inner forward calls pass through); per
    #: thread, so another thread's call on the same model is pruned as usual (integration/threads.py)
    _depth = per_thread(0)

    @property
    def busy(self) -> bool:
        """True while this thread's own call of an original method runs (e.g. generate's inner forwards)."""
        return self._depth > 0

    def _call_original(self, original: Callable, kw: dict) -> Any:
        self._depth += 1
        try:
            return original(**kw)
        finally:
            self._depth -= 1

    #: keyword arguments whose presence means a call may carry media to prune (checked under torch.compile)
    media_kwargs: Tuple[str, ...] = ("pixel_values_videos", "pixel_values")

    def media_in_call(self, args: tuple, kwargs: dict) -> bool:
        """Whether a call may need pruning (media pixels given, or positional arguments past the first, which are
        not inspected here): under torch.compile such a call is routed outside the graph."""
        return len(args) > 1 or any(kwargs.get(name) is not None for name in self.media_kwargs)

    def forward(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        """Called instead of `model.forward(*args, **kwargs)`; `original` is the unpatched bound method."""
        return original(*args, **kwargs)

    def generate(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        """Called instead of `model.generate(*args, **kwargs)`; `original` is the unpatched bound method."""
        return original(*args, **kwargs)


def preset_sink_positions(config: Any, tokens_per_frame: int, preset_name: str, preset_grid: Optional[int]
                          ) -> Tuple[Tuple[int, ...], str]:
    """Attention-sink positions (docs/algorithm.md §1.4) for a frame of `tokens_per_frame` tokens, and a note when
    the preset's were not applied.

    Explicit `config.sink_positions` win (outside the grid: `ValueError`); else the positions of the preset
    `preset_name`, only on the grid of `preset_grid` tokens they were written for (None: any grid), with a note
    otherwise. Positions equal to the preset's own (a config made with `TangoConfig.from_preset`) count as the
    preset's: on another grid they are skipped with the note, as with the default config, not refused.
    """
    explicit = config.sink_positions
    preset_values = tuple(get_preset(preset_name).get("sink_positions") or ()) if preset_name else ()
    if explicit is not None and not (preset_values and tuple(explicit) == preset_values):
        bad = [p for p in explicit if p >= tokens_per_frame]
        if bad:
            raise ValueError(f"sink_positions {bad} are outside the {tokens_per_frame}-token frame grid of this "
                             f"input")
        return tuple(explicit), ""
    # None, or the preset's own positions (what `TangoConfig.from_preset` copies in): applied on their grid only
    values = preset_values
    if not values:
        return (), ""
    if preset_grid is not None and tokens_per_frame != preset_grid:
        return (), (f"preset sink positions of {preset_name!r} are for a {preset_grid}-token grid; this input has "
                    f"{tokens_per_frame} tokens per frame, so no sink positions were applied")
    return values, ""


def required(fn: Callable) -> Callable:
    """Mark a base-class method (or property getter) that subclasses must override (see `required_methods`)."""
    fn._tango_required = True
    return fn


# ------------------------------------------------------------------------------------------ the splice contract
@dataclass
class TokenGrid:
    """One grid of visual tokens of a media item, pruned by one strategy call.

    Args:
        features: (T, L, D) visual tokens in LLM space.
        saliency: (T, L) scores, or None when no strategy call needs them (retention 1.0).
        grid_hw: (H, W) of one frame's token grid.
        timestamps: (T,) seconds, or None (the engine then uses 0..T-1).
        frame_embeddings: (T, D') per-frame embedding for `segmentation="fastvid"`.
        apply_sinks: whether the attention-sink positions of the family's preset may apply to this grid.
    """

    features: torch.Tensor
    saliency: Optional[torch.Tensor]
    grid_hw: Tuple[int, int]
    timestamps: Optional[torch.Tensor] = None
    frame_embeddings: Optional[torch.Tensor] = None
    apply_sinks: bool = True


@dataclass
class EncodedMedia:
    """One video (or one still image pruned as a single frame) after the vision tower.

    Args:
        grids: the token grids the strategy prunes, usually one (LLaVA-OV images with `image_highres="prune"`:
            the base grid and the stitched high-res grid).
        num_placeholders: placeholder tokens the item occupies in the unpruned `input_ids`.
        extra: adapter data carried to `build_replacement` (newline embedding, deepstack features, ...).
    """

    grids: List[TokenGrid]
    num_placeholders: int
    extra: Dict[str, Any] = field(default_factory=dict)

    # The first grid's fields (most items have exactly one grid).
    @property
    def features(self) -> torch.Tensor:
        return self.grids[0].features

    @property
    def saliency(self) -> Optional[torch.Tensor]:
        return self.grids[0].saliency

    @property
    def grid_hw(self) -> Tuple[int, int]:
        return self.grids[0].grid_hw

    @property
    def timestamps(self) -> Optional[torch.Tensor]:
        return self.grids[0].timestamps

    @property
    def frame_embeddings(self) -> Optional[torch.Tensor]:
        return self.grids[0].frame_embeddings


@dataclass
class Replacement:
    """What replaces one media item's placeholders.

    Args:
        src: non-decreasing indices into the item's placeholder positions; an index may repeat (a newline token
            inserted after a kept token reuses that token's slot: every slot holds the same placeholder id).
        features: (len(src), D) features, in `src` order.
        kept: tokens the strategy kept (without newlines).
        extra: adapter data for `encoder_outputs` (e.g. pruned deepstack features).
    """

    src: torch.Tensor
    features: torch.Tensor
    kept: int
    extra: Dict[str, Any] = field(default_factory=dict)


class VideoSpliceContract(ModelAdapter):
    """What an adapter of the splice pipeline (`integration.splice.VideoSpliceAdapter`) knows about its model family:
    the adapter contract, which `splice.py` runs in its five stages (docs/adapters.md).

    Subclasses provide `video_token_id`, `encode_videos`, `encoder_outputs`, for M-RoPE models
    `full_position_ids`, and for image pruning `encode_images` / `image_encoder_outputs`; `build_replacement`
    defaults to the kept tokens only. Options common to all: `fps` (frames per second of the sampled frames, for
    timestamps) and `video_timestamps` (seconds of each sampled frame: a list with one tensor per video, or one
    tensor for all videos); per call, `tango_video_timestamps=` passed to `generate` / `forward` does the same.
    """

    #: kwargs that describe the video pixels; removed before calling the original method
    video_kwargs: Tuple[str, ...] = ("pixel_values_videos",)
    #: kwargs that describe image pixels; removed before calling the original method when images are pruned
    image_kwargs: Tuple[str, ...] = ("pixel_values",)
    #: True when the adapter implements `encode_images` / `image_encoder_outputs` (`prune_images=True`)
    supports_image_pruning: bool = False
    #: True for M-RoPE models whose kept tokens must keep their original 3-D positions
    uses_3d_positions: bool = False
    required_methods = ("video_token_id", "encode_videos", "encoder_outputs")

    options_help = {
        "fps": "frames per second of the sampled frames; timestamps = frame index / fps (default: frame index)",
        "video_timestamps": "(T,) seconds per video (a tensor, or a list with one tensor per video)",
    }

    @classmethod
    def required_names(cls) -> Tuple[str, ...]:
        extra = ("full_position_ids",) if cls.uses_3d_positions else ()
        if cls.supports_image_pruning:
            extra += ("encode_images", "image_encoder_outputs")
        return super().required_names() + extra

    # ------------------------------------------------------------------------------------------ to override
    @property
    @required
    def video_token_id(self) -> int:
        raise NotImplementedError

    @required
    def encode_videos(self, inputs: CallInputs, need_saliency: bool) -> Tuple[List[EncodedMedia], Any, float]:
        """Run the vision tower on the call's videos. Returns (videos, raw encoder output, hook seconds)."""
        raise NotImplementedError

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    @required
    def encode_images(self, inputs: CallInputs, need_saliency: bool) -> Tuple[List[EncodedMedia], Any, float]:
        """Run the vision tower on the call's images, each one an `EncodedMedia` with T=1 (`prune_images=True`)."""
        raise NotImplementedError

    @required
    def image_encoder_outputs(self, raw: Any, images: List[EncodedMedia], replacements: List[Replacement]) -> Any:
        """The `mm_encoder_outputs["image"]` object the model's forward expects, holding the replacements."""
        raise NotImplementedError

    def build_replacement(self, media: EncodedMedia, plans: List[PrunePlan]) -> Replacement:
        """Default: the kept tokens of the first grid only (Qwen), in the media's dtype (strategies may merge in
        float32). LLaVA adds newline tokens."""
        plan = plans[0]
        return Replacement(src=plan.kept_indices, features=plan.features.to(media.features.dtype),
                           kept=int(plan.kept_indices.numel()))

    @required
    def encoder_outputs(self, raw: Any, videos: List[EncodedMedia], replacements: List[Replacement]) -> Any:
        """The `mm_encoder_outputs["video"]` object the model's forward expects, holding the replacements."""
        raise NotImplementedError

    @required
    def full_position_ids(self, inputs: CallInputs, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor) -> torch.Tensor:
        """(3, B, L) positions of the unpruned sequence (M-RoPE models only)."""
        raise NotImplementedError

    def placeholder_mask(self, inputs: CallInputs, kind: str) -> torch.Tensor:
        """(B, L) bool: where the placeholders of `kind` ("video" or "image") are in `inputs["input_ids"]`.

        Default: the positions holding `video_token_id` (`image_token_id`). Override when the ids alone do not tell
        the kinds apart (GLM-4V writes video frames with the image token id; `mm_token_type_ids` says which is which).
        """
        return inputs["input_ids"] == (self.video_token_id if kind == "video" else self.image_token_id)

    def after_splice(self, positions: Optional[torch.Tensor], attention_mask: torch.Tensor) -> None:
        """Hook for model state that depends on the shortened sequence (Qwen: `rope_deltas`)."""


def _check_adapter(name: str, cls) -> type:
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
        raise ValueError(f"adapter {name!r}: {cls!r} is not a ModelAdapter subclass")
    missing = cls.missing_methods()
    if missing:
        raise ValueError(f"adapter {name!r}: {cls.__name__} does not implement {missing}, which "
                         f"{cls.__mro__[1].__name__} requires (see docs/adapters.md)")
    cls.model_type = name
    return cls


ADAPTERS = Registry(
    "adapter", check=_check_adapter, entry_point_group=ENTRY_POINT_GROUP,
    hint="To support another model, subclass tango_plugin.ModelAdapter and register it with "
         "@tango_plugin.register_adapter('<model_type>') or the 'tango_plugin.adapters' entry-point group "
         "(docs/adapters.md).")


def register_adapter(name: str, cls: Optional[Type[ModelAdapter]] = None, *, exist_ok: bool = False):
    """Register a `ModelAdapter` subclass (or a lazy ``"module:Class"`` string) for `config.model_type == name`;
    usable as a decorator.

    Args:
        name: the Hugging Face `config.model_type` the adapter handles.
        cls: the adapter class or ``"module:Class"`` (omit to use as a decorator).
        exist_ok: replace an adapter already registered under `name` instead of raising `ValueError`.

    Example:
        ```python
        @register_adapter("my_model_type")
        class MyAdapter(ModelAdapter): ...
        ```
    """
    return ADAPTERS.register(name, cls, exist_ok=exist_ok)


#: remove the adapter registered for a model_type (an unknown name is a `ValueError`)
unregister_adapter = ADAPTERS.unregister
#: sorted model_types that have an adapter (built-in, registered or from entry points)
list_adapters = ADAPTERS.names


def get_adapter(model_type: str) -> Type[ModelAdapter]:
    """The adapter class registered for `model_type`; `ValueError` (listing the supported ones) when none is."""
    try:
        return ADAPTERS.get(model_type)
    except ValueError as exc:
        if model_type in ADAPTERS:
            raise
        raise ValueError(f"no Tango adapter for model_type {model_type!r}; supported model types: "
                         f"{list_adapters()}. {ADAPTERS._hint}") from exc


__all__ = ["ModelAdapter", "CallInputs", "VideoSpliceContract", "TokenGrid", "EncodedMedia", "Replacement", "ADAPTERS",
           "preset_sink_positions", "register_adapter", "unregister_adapter", "get_adapter", "list_adapters",
           "required", "ENTRY_POINT_GROUP"]
