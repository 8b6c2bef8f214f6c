"""What every harness integration shares: Tango on one harness model instance, its warnings and its JSON report.

A harness session (`lmms_eval.session.TangoSession`, `vlmevalkit.TangoSession`) subclasses `HarnessSession` and
adds what is particular to its harness: how frames are traced and which rows of the report belong to which sample.
The wrappers it puts around the model's `generate` / `forward` are entries of the Tango handle's hook registry, so
`handle.hooks()` lists them and `handle.remove()` takes them off with the rest.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple


class HarnessSession:
    """Tango on one harness model: enable, route calls, collect warnings, write the report.

    Args:
        owner: the harness's model object (the wrapper class instance).
        name: the model name the user chose (for messages and the report).
        config / options / extras: what `tango_plugin.knobs.config_from_knobs` returned.
    """

    def __init__(self, owner: Any, name: str, config, options: dict, extras: dict) -> None:
        self.owner = owner
        self.name = name
        self.config = config
        self.options = options
        if extras.get("capture"):
            raise ValueError(f"tango_capture={extras['capture']!r} is a knob of the vLLM plugin only; {name} writes "
                             "its report with tango_report")
        self.enabled = bool(extras["enabled"])
        self.report_path = extras["report"]
        self.handle = None
        self.records: List[dict] = []
        self.warnings: List[str] = []
        self.calls = 0
        self.failures: List[str] = []
        self._warned: set = set()
        self.prefills: List[dict] = []  # one per generate call: {"seconds", "rows"}
        self._prefill_start: Optional[Tuple[float, int]] = None
        self._own_registry = None
        self._cuda = False

    # ------------------------------------------------------------------------------------------ enabling
    def enable(self, model: Any, routes: Dict[str, Callable]) -> None:
        """`tango_plugin.enable(model)`, then wrap the named methods through the handle's registry:
        ``routes[name](original, args, kwargs)`` is called instead of ``model.<name>(*args, **kwargs)``."""
        import tango_plugin as tango

        try:
            self.handle = tango.enable(model, self.config, **self.options)
        except ValueError as err:
            raise ValueError(f"{self.name}: cannot enable Tango on this model: {err}") from None
        for method, route in routes.items():
            self.registry(model).wrap_method(f"harness:{method}", model, method, route)

    def registry(self, model: Any):
        """Where the session's wrappers go: the Tango handle's hook registry, or (tango=false) one of its own, so
        that they are listed and removable the same way."""
        if self.handle is not None:
            return self.handle.registry
        if self._own_registry is None:
            from tango_plugin.integration.hooks import HookRegistry

            self._own_registry = HookRegistry(model)
        return self._own_registry

    def time_prefills(self, model: Any) -> None:
        """Time each `generate` call from its start to the end of its first forward: the prefill (vision tower,
        pruning and the LLM's pass over the prompt), with or without Tango, CUDA synchronised at both ends. The
        report's `prefill` says how many calls and rows, and the seconds per row."""
        try:
            self._cuda = next(model.parameters()).is_cuda
        except (AttributeError, StopIteration, TypeError):
            self._cuda = False
        registry = self.registry(model)
        registry.wrap_method("harness:prefill-start", model, "generate", self._timed_generate)
        registry.add_forward_hook("harness:prefill-end", model, self._prefill_end)

    def _sync(self) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize()

    def _timed_generate(self, original: Callable, args: tuple, kwargs: dict):
        ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
        rows = int(ids.shape[0]) if getattr(ids, "ndim", 0) == 2 else 1
        self._sync()
        self._prefill_start = (time.perf_counter(), rows)
        try:
            return original(*args, **kwargs)
        finally:
            self._prefill_start = None

    def _prefill_end(self, module: Any, inputs: Any, output: Any) -> None:
        if self._prefill_start is None:  # a decoding step, or a forward outside generate
            return
        start, rows = self._prefill_start
        self._prefill_start = None
        self._sync()
        self.prefills.append({"seconds": time.perf_counter() - start, "rows": rows})

    def prefill_summary(self) -> dict:
        seconds = sum(p["seconds"] for p in self.prefills)
        rows = sum(p["rows"] for p in self.prefills)
        return {"calls": len(self.prefills), "rows": rows, "seconds": seconds,
                "seconds_per_row": seconds / rows if rows else None}

    def pass_frame_times(self, carrier: Any, kwargs: dict) -> None:
        """Put the traced frame times of a processor output's `carrier` into `kwargs` as `tango_video_timestamps`
        (unless the caller gave times); when some video could not be traced, pass none and say so once."""
        if carrier is None or "tango_video_timestamps" in kwargs:
            return
        if carrier.complete:
            kwargs["tango_video_timestamps"] = carrier.timestamps()
            carrier.passed = True
            return
        missing = [i for i, v in enumerate(carrier.videos) if v is None]
        self.warn_once("untraced", f"{self.name}: the frames of video(s) {missing} could not be traced to the "
                                   "decoded file, so no frame times are passed for this call and the engine falls "
                                   "back to its own (see its warning); the report marks these videos 'untraced'")

    # ------------------------------------------------------------------------------------------ warnings
    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            text = f"tango_plugin: {message}"
            self.warnings.append(text)
            self.log(text)
            warnings.warn(text, stacklevel=3)

    def log(self, text: str) -> None:
        """Where the harness shows warnings (it may silence Python's); default: nowhere else."""

    @staticmethod
    def call_collecting_warnings(fn: Callable, *args, **kwargs) -> Tuple[Any, List[str]]:
        """Run `fn` and return (its result, the tango_plugin warnings it raised); every warning is re-issued."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn(*args, **kwargs)
        notes = []
        for w in caught:
            if str(w.message).startswith("tango_plugin:"):
                notes.append(str(w.message))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return out, notes

    # ------------------------------------------------------------------------------------------ report
    def summary_fields(self) -> dict:
        """Harness-specific fields of the report (model path, wrapper class, ...)."""
        return {}

    def summary(self) -> dict:
        before = sum(int(r.get("visual_tokens_before") or 0) for r in self.records)
        after = sum(int(r.get("visual_tokens_after") or 0) for r in self.records)
        return {"model": self.name, **self.summary_fields(), "enabled": self.enabled,
                "config": self.config.to_dict(), "enable_options": self.options, "generate_calls": self.calls,
                "visual_tokens_before": before, "visual_tokens_after": after, "warnings": self.warnings,
                "prefill": self.prefill_summary(), "samples": self.records}

    def run_line(self) -> str:
        """One line on what Tango did in this run so far: videos pruned, visual tokens before / after, where the
        frame times came from (printed at the end of each harness run)."""
        if not self.enabled:
            return f"tango: {self.name}: off (tango=false): nothing pruned"
        # a record's "videos" is its list of video entries (a harness report) or the engine's count
        def count(row) -> int:
            videos = row.get("videos")
            return len(videos) if isinstance(videos, list) else int(videos or 0)

        videos = [v for r in self.records if isinstance(r.get("videos"), list) for v in r["videos"]]
        pruned = sum(count(r) for r in self.records if r.get("pruned"))
        total = sum(count(r) for r in self.records)
        before = sum(int(r.get("visual_tokens_before") or 0) for r in self.records)
        after = sum(int(r.get("visual_tokens_after") or 0) for r in self.records)
        share = f" ({after / before:.1%})" if before else ""
        sources: Dict[str, int] = {}
        for v in videos:
            key = str(v.get("times_source")).split(";")[0]
            sources[key] = sources.get(key, 0) + 1
        times = ", ".join(f"{k} x{n}" for k, n in sorted(sources.items())) or "no videos"
        report = f"; report: {self.report_path}" if self.report_path else ""
        return (f"tango: {self.name}: {pruned} of {total} videos pruned in {self.calls} calls, visual tokens "
                f"{before} -> {after}{share}; frame times: {times}{report}")

    def note_failure(self, err: BaseException) -> None:
        """The harness run raised inside this model: say so now and once more when the process ends, since the
        harness itself may log it and exit with status 0 (lmms-eval does)."""
        line = (f"tango: {self.name}: the evaluation failed inside this model ({type(err).__name__}: {err}); its "
                "results are missing or incomplete")
        self.failures.append(line)
        self.log(line)
        if len(self.failures) == 1:
            atexit.register(lambda: print("\n".join(self.failures), file=sys.stderr, flush=True))

    def rank(self) -> Tuple[int, int]:
        """(rank, world size) of this process; the report of rank r > 0 worlds goes to `<path>.rank<r>.json`."""
        return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)

    def write_report(self) -> None:
        if not self.report_path:
            return
        path = self.report_path
        rank, world = self.rank()
        if world and world > 1:
            root, ext = os.path.splitext(path)
            path = f"{root}.rank{rank}{ext or '.json'}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(self.summary(), fh, indent=2, default=json_default)
        os.replace(tmp, path)  # a reader never sees half a report


class ProcessorProxy:
    """Stands in for a harness model's processor: every attribute is the processor's own; subclasses implement
    `__call__` (trace the frames of each video given, then call the real processor)."""

    def __init__(self, processor: Any, session: HarnessSession) -> None:
        self.__dict__["_tango_processor"] = processor
        self.__dict__["_tango_session"] = session

    @property
    def processor(self) -> Any:
        return self.__dict__["_tango_processor"]

    @property
    def session(self) -> Any:
        return self.__dict__["_tango_session"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_tango_processor"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_tango_processor"], name, value)


def video_entry(frames: Optional[Any], spg: Optional[float], passed: bool, source: Optional[str] = None) -> dict:
    """The report entry of one video: the true frame indices, fps and times, whether they reached the engine."""
    if frames is None:
        entry = {"path": None, "frame_indices": None, "video_fps": None, "frame_times": None,
                 "times_source": "untraced", "passed_to_engine": False}
    else:
        entry = {"path": frames.path, "frame_indices": frames.frame_indices, "video_fps": frames.video_fps,
                 "frame_times": frames.frame_times, "times_source": source or frames.source,
                 "passed_to_engine": passed}
    if spg is not None:
        entry["model_second_per_grid_ts"] = spg  # what the harness's processor call gave the model's own M-RoPE
    return entry


def json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


__all__ = ["HarnessSession", "ProcessorProxy", "video_entry", "json_default"]
