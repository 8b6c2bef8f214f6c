"""What the Tango lmms-eval models add to lmms-eval's wrappers: knobs, pruning, exact frame times, the report.

The wrappers are used as they are (subclassed, never copied). Frame times are traced at the two places every video
passes through, whatever the wrapper does in between:

1. the decoder. While a wrapper evaluates, `process_vision_info` in its module (qwen-vl-utils) is replaced by a
   recorder that calls the real one asking for the video metadata too, and returns what the wrapper asked for, each
   video tensor marked with its frame indices (into the file) and the file's fps. The mark follows the wrapper's own
   re-sampling (`video[indices]`: lmms-eval's `qwen2_vl` / `qwen2_5_vl` re-sample after qwen-vl-utils). For
   `llava_hf`, the decord `VideoReader` in its module records the indices of `get_batch` in `load_video`.
2. the processor. `self.processor` is wrapped; each video it receives is looked up (its mark, else the object
   itself, else frame-by-frame equality with a decoded video), the mark is removed, and the seconds of its frames
   (`frame index / video fps`) travel with the processor output to the patched `generate`, which passes them as
   `tango_video_timestamps=`. The model therefore never falls back to a processor default (24 fps).

The records, the marks, the book and the recorders are `patches/_frames.py` (shared with the VLMEvalKit glue); this
module decides when they are swapped into a wrapper's modules and writes the report.

After each `generate`, the rows of `handle.report()` and the frame times of their videos are appended to the
report (`tango_report=path.json`), written after every call so that a run that stops still leaves it. Nothing in a
row is guessed: its videos are the ones the adapter says it holds (`video_indices`, positions in the processor's
order), and its request (`doc_id`, `task`) comes from lmms-eval's own objects (`RequestTrail`): the batch its
`Collator` handed the wrapper last, or for a wrapper that walks the requests itself (`llava_vid`), the request whose
`doc_to_visual` ran since the previous model call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple

from tango_plugin.knobs import config_from_knobs, split_knobs

from .._frames import (
    CARRIER_KEY,
    FrameBook,
    FrameTimes,
    MarkedFrames,
    VideoFrames,
    recording_process_vision_info,
    recording_video_reader,
    unmark,
)
from .._session import HarnessSession, video_entry
from .._session import ProcessorProxy as BaseProcessorProxy


def _loguru(level: str, text: str) -> None:
    """`text` through lmms-eval's logger (its INFO and WARNING lines reach the console)."""
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover - lmms-eval always has loguru
        print(text, file=sys.stderr)
        return
    getattr(logger, level)(text)


class ProcessorProxy(BaseProcessorProxy):
    """Wraps a wrapper's processor: traces the frames of each video it is given, calls it on plain tensors and adds
    a `FrameTimes` to the output. Every other attribute is the processor's own."""

    def __call__(self, *args, **kwargs):
        processor, session = self.__dict__["_tango_processor"], self.__dict__["_tango_session"]
        videos = kwargs.get("videos")
        if videos is None or not session.enabled:
            return processor(*args, **kwargs)
        single = not isinstance(videos, (list, tuple))
        items = [videos] if single else list(videos)
        frames = [session.book.resolve(v) for v in items]
        plain = [unmark(v) for v in items]
        kwargs["videos"] = plain[0] if single else type(videos)(plain)
        out = processor(*args, **kwargs)
        spg = out.get("second_per_grid_ts") if hasattr(out, "get") else None
        spg = [float(s) for s in spg] if spg is not None else None
        out[CARRIER_KEY] = FrameTimes(frames, spg)
        return out


# ----------------------------------------------------------------------------------------------- the requests
class RequestTrail:
    """Which lmms-eval requests the wrapper is working on, read from lmms-eval's own objects while it evaluates.

    Batching wrappers get their batches from `lmms_eval.utils.Collator.get_batched`: while the wrapper evaluates,
    `Collator` is a subclass that notes each batch as it hands it out, so a model call's rows are that batch's
    requests, in order (a multi-round wrapper's rounds share their batch). A wrapper that walks the requests itself
    (`llava_vid`, one at a time) gets requests whose callables (`doc_to_visual`, `doc_to_messages`) note their
    request when called; the requests noted since the previous model call are that call's rows.
    """

    def __init__(self) -> None:
        self.batch: Optional[List[Tuple[Any, Any]]] = None  # (doc_id, task) per row of the last Collator batch
        self.called: List[Tuple[Any, Any]] = []

    def collator(self, real: type) -> type:
        trail = self

        class NotingCollator(real):
            def get_batched(self, *args: Any, **kwargs: Any):
                for batch in super().get_batched(*args, **kwargs):
                    trail.batch = [_request_key(item) for item in batch]
                    yield batch

        NotingCollator.tango_recorder = True
        return NotingCollator

    def noting(self, requests: Sequence[Any]) -> list:
        """Copies of `requests` whose callable arguments note their request when called (the originals are left
        as they are)."""
        out = []
        for request in requests:
            args = getattr(request, "arguments", None)
            if not isinstance(args, tuple) or not dataclasses.is_dataclass(request):
                out.append(request)
                continue
            key = _request_key(args)
            noted = tuple(self._noting(a, key) if callable(a) else a for a in args)
            out.append(dataclasses.replace(request, arguments=noted))
        return out

    def _noting(self, fn: Callable, key: Tuple[Any, Any]) -> Callable:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            self.called.append(key)
            return fn(*args, **kwargs)

        return call

    def rows(self) -> List[Tuple[Any, Any]]:
        """(doc_id, task) of each row of the model call that just ran."""
        called, self.called = self.called, []
        return list(self.batch) if self.batch is not None else called


# ----------------------------------------------------------------------------------------------- the session
class TangoSession(HarnessSession):
    """Tango on one lmms-eval wrapper instance: the handle, the interceptions, the report."""

    def __init__(self, owner: Any, model_name: str, config, options: dict, extras: dict) -> None:
        super().__init__(owner, model_name, config, options, extras)
        self.book = FrameBook()
        self.trail = RequestTrail()

    @property
    def model_name(self) -> str:
        return self.name

    # -------------------------------------------------------------------------------------- setup
    def install(self, model: Any) -> None:
        """Enable Tango on `model` and route its `generate` / `forward` through the frame-time channel (both
        wrappers are entries of the handle's hook registry)."""
        if self.enabled:
            self.enable(model, {"generate": self._route_generate, "forward": self._route_forward})
        self.time_prefills(model)  # also with tango=false: the unpruned baseline's prefill time
        self.write_report()

    def _route_generate(self, original, args, kwargs):
        return self._call(original, True, *args, **kwargs)

    def _route_forward(self, original, args, kwargs):
        return self._call(original, False, *args, **kwargs)

    def _call(self, inner, generating: bool, *args, **kwargs):
        carrier = kwargs.pop(CARRIER_KEY, None)
        self.pass_frame_times(carrier, kwargs)
        # lmms-eval silences Python warnings, so the engine's (skipped pruning, missing times) are caught here,
        # logged through lmms-eval's logger and kept in the report
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = inner(*args, **kwargs)
        notes = []
        for w in caught:
            text = str(w.message)
            if text.startswith("tango_plugin:"):
                notes.append(text)
                self.log(text)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if carrier is not None:
            self.record(carrier, notes)
        elif notes:
            self.warnings.extend(notes)
        return out

    @contextlib.contextmanager
    def evaluating(self, requests: Sequence[Any]):
        """While the wrapper evaluates: decoders in its modules record, and the requests of each model call are
        noted (`RequestTrail`). Yields the requests to hand the wrapper (copies that note themselves)."""
        swaps = []
        # with tango=false nothing records frames, but the report is still written (it has the prefill times)
        for module in _wrapper_modules(type(self.owner)) if self.enabled else ():
            real = module.__dict__.get("process_vision_info")
            if callable(real) and not getattr(real, "tango_recorder", False):
                swaps.append((module, "process_vision_info", real))
                module.process_vision_info = recording_process_vision_info(real, self.book)
            real_cls = module.__dict__.get("VideoReader")
            if isinstance(real_cls, type) and not getattr(real_cls, "tango_recorder", False):
                swaps.append((module, "VideoReader", real_cls))
                module.VideoReader = recording_video_reader(real_cls, self.book.note_decode)
        self.trail = RequestTrail()
        if self.enabled:
            utils = sys.modules.get("lmms_eval.utils")
            real = getattr(utils, "Collator", None)
            if isinstance(real, type) and not getattr(real, "tango_recorder", False):
                swaps.append((utils, "Collator", real))
                utils.Collator = self.trail.collator(real)
            requests = self.trail.noting(requests)
        try:
            yield requests
        except Exception as err:
            self.note_failure(err)
            raise
        finally:
            for module, name, real in reversed(swaps):
                setattr(module, name, real)
            self.write_report()
        self.log_info(self.run_line())

    def log(self, text: str) -> None:
        _loguru("warning", text)

    @staticmethod
    def log_info(text: str) -> None:
        _loguru("info", text)

    # -------------------------------------------------------------------------------------- report
    def record(self, carrier: FrameTimes, notes: Sequence[str] = ()) -> None:
        self.calls += 1
        self.warnings.extend(notes)
        report = self.handle.report() if self.handle is not None else {"samples": []}
        rows = report.get("samples") or []
        videos = list(carrier.videos)
        spg = carrier.second_per_grid_ts
        requests = self.trail.rows()
        for b, row in enumerate(rows):
            mine = [i for i in row.get("video_indices") or () if i < len(videos)]
            if not mine and len(rows) == 1:
                mine = list(range(len(videos)))  # one row holds every video of the call (e.g. passed through)
            doc_id, task = requests[b] if b < len(requests) else (None, None)
            entry = {"call": self.calls, "row": b, "doc_id": doc_id, "task": task, **row}
            entry["videos"] = [self._video_entry(videos[i], None if spg is None else spg[i], carrier.passed)
                               for i in mine]
            entry["warnings"] = list(notes)  # the engine warns once per run: the first call that hit it
            self.records.append(entry)
        self.write_report()

    @staticmethod
    def _video_entry(frames: Optional[VideoFrames], spg: Optional[float], passed: bool) -> dict:
        source = None if frames is None else f"{frames.source}; traced: {frames.traced}"
        return video_entry(frames, spg, passed, source)

    def summary_fields(self) -> dict:
        return {"wrapper": _wrapper_path(type(self.owner))}

    def rank(self):
        return getattr(self.owner, "_rank", 0), getattr(self.owner, "_world_size", 1)


def _request_key(args: Any) -> Tuple[Any, Any]:
    """(doc_id, task) of a request's arguments: lmms-eval's `Instance.args` are (context, gen_kwargs or
    doc_to_messages, doc_to_visual or gen_kwargs, doc_id, task, split)."""
    args = args if isinstance(args, tuple) else ()
    return (args[3], args[4]) if len(args) > 4 else (None, None)


def _wrapper_modules(cls: type) -> list:
    return [sys.modules[c.__module__] for c in cls.__mro__
            if c.__module__.startswith("lmms_eval.models.") and c.__module__ in sys.modules]


def _wrapper_path(cls: type) -> str:
    base = next((c for c in cls.__mro__ if c.__module__.startswith("lmms_eval.models.")), cls)
    return f"{base.__module__}.{base.__qualname__}"


# ----------------------------------------------------------------------------------------------- llava wrappers
class LlavaTangoSession(TangoSession):
    """The session of the `llava` wrappers (`llava_onevision`, `llava_vid`): they decode with decord in their
    `load_video`, hand the frames to llava's image processor (`preprocess`, not a processor call with `videos=`) and
    call `model.generate(..., images=[video], modalities=...)`; the batch size is 1.

    `load_video` (overridden by the Tango subclass) notes the decoded frames (`note_video`); the patched
    `generate` / `forward` takes the videos noted since the last call and, when they match the call's video tensors
    one to one (same count, same number of frames each), passes their times (`frame index / file fps`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._noted: List[Optional[VideoFrames]] = []

    def note_video(self, frames: Any, decodes: Sequence[VideoFrames]) -> None:
        """`load_video` returned `frames` after the decord `get_batch` calls `decodes`: exactly one decode of
        exactly that many frames is traced, anything else is noted as untraced."""
        n = len(frames) if frames is not None else -1
        traced = decodes[0] if len(decodes) == 1 and len(decodes[0].frame_indices) == n else None
        self._noted.append(traced.traced_as("load_video") if traced is not None else None)

    def _route_generate(self, original, args, kwargs):
        return self._call(original, True, *args, **self._with_carrier(original, args, kwargs))

    def _route_forward(self, original, args, kwargs):
        return self._call(original, False, *args, **self._with_carrier(original, args, kwargs))

    def _with_carrier(self, original, args: tuple, kwargs: dict) -> dict:
        noted, self._noted = self._noted, []
        if not self.enabled or CARRIER_KEY in kwargs:
            return kwargs
        try:
            import inspect

            bound = inspect.signature(original).bind_partial(*args, **kwargs).arguments
        except (TypeError, ValueError):
            bound = dict(kwargs)
        images = bound.get("images")
        if images is None:
            return kwargs
        images = list(images) if isinstance(images, (list, tuple)) else list(images.unbind(0))
        modalities = bound.get("modalities", ["image"])
        modalities = [modalities] if isinstance(modalities, str) else list(modalities or [])
        videos = [img for i, img in enumerate(images) if i < len(modalities) and modalities[i] == "video"]
        if not videos:
            return kwargs
        frames: List[Optional[VideoFrames]] = [None] * len(videos)
        if len(noted) == len(videos):
            frames = [f if f is not None and (v.shape[0] if v.ndim == 4 else 1) == len(f.frame_indices) else None
                      for f, v in zip(noted, videos)]
        return {**kwargs, CARRIER_KEY: FrameTimes(frames)}


class LlavaFrames:
    """Put before the Tango mixin in the bases of the `llava` wrappers' Tango subclasses: `load_video` notes the
    frames its decord `get_batch` decoded (decord's `VideoReader` in the wrapper's module records while the wrapper
    evaluates)."""

    tango_processor_attr = None  # llava's image processor gets plain frames; the times are noted in load_video
    tango_session_class = LlavaTangoSession

    def load_video(self, *args: Any, **kwargs: Any):
        book = self._tango.book
        book.start_decodes()
        out = super().load_video(*args, **kwargs)
        decodes = book.take_decodes()
        if self._tango.enabled:
            # llava_onevision returns the frames; llava_vid returns (frames, frame_time, video_time)
            frames = out[0] if isinstance(out, tuple) else out
            self._tango.note_video(frames, decodes)
        return out


# ----------------------------------------------------------------------------------------------- the mixin
class TangoLmmsMixin:
    """Put first in the bases of a subclass of an lmms-eval wrapper: `class TangoX(TangoLmmsMixin, X)`.

    Subclasses set `tango_model_name` and `tango_processor_attr` (the attribute holding the processor; None: the
    processor is not wrapped) and may set `tango_session_class` (a `TangoSession` subclass: the llava wrappers trace
    their frames in `load_video` instead of at a processor call).
    """

    tango_model_name: str = "tango"
    tango_processor_attr: Optional[str] = "processor"
    tango_session_class: type = TangoSession

    def __init__(self, **kwargs: Any) -> None:
        knobs, rest = split_knobs(kwargs)
        try:
            config, options, extras = config_from_knobs(knobs)
        except ValueError as err:  # before the checkpoint loads: a typo costs nothing
            raise ValueError(f"{self.tango_model_name}: bad --model_args: {err}") from None
        super().__init__(**rest)  # the wrapper asserts that it got only its own arguments
        self._tango = self.tango_session_class(self, self.tango_model_name, config, options, extras)
        self._tango.install(self.model)
        if self._tango.enabled and self.tango_processor_attr:
            processor = getattr(self, self.tango_processor_attr)
            setattr(self, self.tango_processor_attr, ProcessorProxy(processor, self._tango))

    @property
    def tango_handle(self):
        """The `TangoHandle` of the wrapped model (None with `tango=false`)."""
        return self._tango.handle

    def generate_until(self, requests):
        with self._tango.evaluating(requests) as noting:
            return super().generate_until(noting)

    def generate_until_multi_round(self, requests):
        with self._tango.evaluating(requests) as noting:
            return super().generate_until_multi_round(noting)


__all__ = ["TangoLmmsMixin", "TangoSession", "LlavaTangoSession", "LlavaFrames",
           "ProcessorProxy", "FrameBook", "VideoFrames", "FrameTimes",
           "MarkedFrames", "CARRIER_KEY", "RequestTrail"]
