"""VLMEvalKit integration: Tango pruning in VLMEvalKit's own Qwen2/2.5-VL, Qwen3-VL and LLaVA-OneVision (HF) classes.

VLMEvalKit (open-compass/VLMEvalKit, package `vlmeval`, not on PyPI) builds models from `functools.partial` entries of
`vlmeval.config.supported_VLM`; it has no plugin mechanism. This module adds, without copying its code:

- subclasses of its classes that take the `tango_*` knobs as keyword arguments (`tango_plugin.knobs`, the mapping every
  integration shares), enable Tango on their model, hand the engine the exact time of every frame they sample
  (`frame index / file fps`, per call as `tango_video_timestamps=`) and write a per-sample report
  (`tango_report=path.json`):

  | class                     | extends VLMEvalKit's   | frames traced from                                    |
  | ------------------------- | ---------------------- | ----------------------------------------------------- |
  | `TangoQwen2VLChat`        | `Qwen2VLChat`          | qwen-vl-utils `process_vision_info` (its metadata)    |
  | `TangoQwen3VLChat`        | `Qwen3VLChat`          | qwen-vl-utils metadata (also given to the processor)  |
  | `TangoLLaVA_OneVision_HF` | `LLaVA_OneVision_HF`   | decord `VideoReader.get_batch` in `load_video`        |

- `register_supported_vlm()`: a `tango_<name>` entry in `supported_VLM` for every entry built on those classes (and
  the classes in `vlmeval.vlm`, for run.py's `--config` files);
- a launcher, `python -m tango_plugin.patches.vlmevalkit run <run.py arguments>`, that registers them and runs
  VLMEvalKit's own `run.py`.

`Qwen2VLChat` calls the processor without video metadata, so Qwen2.5-VL's `second_per_grid_ts` comes from the
processor's 24-fps default; the engine never uses it: it gets the frames' real seconds. The model itself runs as
VLMEvalKit runs it (the report records the `second_per_grid_ts` the model got).

VLMEvalKit's classes assume CUDA (an nvidia-smi probe asserting a GPU, FlashAttention-2, `.to('cuda')`); the
subclasses keep that on a CUDA machine and, where no CUDA device exists, run on the CPU instead: the probe is skipped,
attention is `sdpa` (or the `attn_implementation=` keyword), float16 loads become float32 and `.to('cuda')` goes to the
model's device. `attn_implementation=` also replaces FlashAttention-2 on a GPU without `flash-attn`.

Frame times are traced with the same core as the lmms-eval glue (`patches/_frames.py`): qwen-vl-utils'
`process_vision_info` marks each video while a Qwen sample runs, decord's `VideoReader` notes what `load_video`
read for LLaVA-OneVision, and the processor wrapper looks each video up (mark, identity, equal frames; else the
`video_metadata` given to the processor).

Importing this module needs neither VLMEvalKit nor transformers; the classes are built on first use
(`tango_plugin.patches.vlmevalkit.TangoQwen2VLChat`), and raise `ImportError` saying what to install when `vlmeval`
is missing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from tango_plugin.knobs import config_from_knobs, split_knobs

from ._frames import (
    CARRIER_KEY,
    FrameBook,
    FrameTimes,
    VideoFrames,
    frames_from_metadata,
    recording_process_vision_info,
    recording_video_reader,
    unmark,
)
from ._session import HarnessSession, video_entry
from ._session import ProcessorProxy as BaseProcessorProxy

#: our class name -> the VLMEvalKit class it extends (attribute of `vlmeval.vlm`)
CLASSES = {
    "TangoQwen2VLChat": "Qwen2VLChat",
    "TangoQwen3VLChat": "Qwen3VLChat",
    "TangoLLaVA_OneVision_HF": "LLaVA_OneVision_HF",
}
#: prefix of the `supported_VLM` names `register_supported_vlm` adds
PREFIX = "tango_"
INSTALL_HINT = ("VLMEvalKit (the `vlmeval` package) is not installed; it is not on PyPI: install "
                "open-compass/VLMEvalKit as its README says, with qwen-vl-utils[decord] (docs/vlmevalkit.md)")


def _vlmeval_vlm():
    try:
        import vlmeval.vlm as vlm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({type(err).__name__}: {err})") from err
    return vlm


@contextlib.contextmanager
def _swapped(obj: Any, name: str, value: Any):
    had = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


# ----------------------------------------------------------------------------------------------- CPU fallback
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:
        return False
    return _cuda()


@contextlib.contextmanager
def _runnable_construction(base: type, attn_implementation: Optional[str]):
    """While VLMEvalKit's `__init__` runs: no GPU probe assert and no FlashAttention-2 / float16 / `.to('cuda')`
    where they cannot work. With CUDA and flash-attn and no `attn_implementation=`, nothing changes."""
    import torch
    from transformers import PreTrainedModel

    cuda = _cuda()
    loaded: List[Any] = []
    real = PreTrainedModel.__dict__["from_pretrained"]

    def fix(kwargs: dict) -> dict:
        # an Auto class has already put VLMEvalKit's choice into the config it passes on
        config = kwargs.get("config")
        from_config = getattr(config, "_attn_implementation", None) if "attn_implementation" not in kwargs else None
        wanted = kwargs.get("attn_implementation", from_config)
        choice = attn_implementation
        if choice is None and wanted == "flash_attention_2" and not _flash_attn_available():
            choice = "sdpa"
            warnings.warn("tango_plugin: flash-attn is not usable here, so the VLMEvalKit model loads with "
                          "attn_implementation='sdpa' (pass attn_implementation= to choose)", stacklevel=4)
        if choice is not None:
            if from_config is not None:
                config._attn_implementation = choice
            else:
                kwargs["attn_implementation"] = choice
        if not cuda:
            for key in ("torch_dtype", "dtype"):
                if kwargs.get(key) in (torch.float16, torch.bfloat16):
                    kwargs[key] = torch.float32  # half precision on the CPU: slow and partly unsupported
        return kwargs

    def from_pretrained(cls, *args, **kwargs):
        model = real.__func__(cls, *args, **fix(kwargs))
        if not cuda:
            loaded.append(model)
            model.__dict__["to"] = functools.partial(_to_model_device, model, model.__class__.to)
        return model

    swaps = [_swapped(PreTrainedModel, "from_pretrained", classmethod(from_pretrained))]
    module = sys.modules.get(base.__module__)
    if not cuda and module is not None and "get_gpu_memory" in vars(module):
        swaps.append(_swapped(module, "get_gpu_memory", lambda: [1]))  # the probe asserts a GPU with free memory
    with contextlib.ExitStack() as stack:
        for swap in swaps:
            stack.enter_context(swap)
        try:
            yield
        finally:
            for model in loaded:
                model.__dict__.pop("to", None)


def _is_cuda(device: Any) -> bool:
    return (isinstance(device, str) and device.startswith("cuda")) or getattr(device, "type", None) == "cuda"


def _to_model_device(model, real_to, *args, **kwargs):
    # `.to('cuda')` of a freshly loaded model on a machine without CUDA: stays where it is
    args = tuple(a for a in args if not _is_cuda(a))
    if _is_cuda(kwargs.get("device")):
        kwargs.pop("device")
    return real_to(model, *args, **kwargs) if (args or kwargs) else model


def _device_fixed_class(cls: type, model: Any) -> type:
    """A subclass of the processor output's class whose `.to('cuda', float16)` means the model's device and dtype
    when there is no CUDA device."""

    def to(self, *args, **kwargs):
        import torch

        if not _cuda():
            device = getattr(model, "device", "cpu")
            dtype = getattr(model, "dtype", None)
            args = tuple(device if _is_cuda(a) else (dtype if a in (torch.float16, torch.bfloat16) and dtype
                                                    else a) for a in args)
            if _is_cuda(kwargs.get("device")):
                kwargs["device"] = device
        return cls.to(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"to": to, "__module__": cls.__module__})


class ProcessorProxy(BaseProcessorProxy):
    """Wraps the class's processor: traces the frames of each video it is given, adds a `FrameTimes` to the output,
    and makes the output's `.to('cuda')` work without CUDA. Every other attribute is the processor's own."""

    def __call__(self, *args, **kwargs):
        processor, session = self.__dict__["_tango_processor"], self.__dict__["_tango_session"]
        videos = kwargs.get("videos")
        carrier = None
        if videos is not None and session.enabled:
            items = list(videos) if isinstance(videos, (list, tuple)) else [videos]
            metadata = kwargs.get("video_metadata")
            metadata = list(metadata) if isinstance(metadata, (list, tuple)) else [metadata] * len(items)
            frames = []
            for k, video in enumerate(items):
                found = session.book.resolve(video)
                if found is None and k < len(metadata) and metadata[k] is not None:
                    found = frames_from_metadata(metadata[k], "video_metadata given to the processor")
                frames.append(found)
            carrier = FrameTimes(frames)
            plain = [unmark(v) for v in items]
            kwargs["videos"] = type(videos)(plain) if isinstance(videos, (list, tuple)) else plain[0]
        fix = getattr(session.owner, "_tango_processor_kwargs", None)
        if fix is not None:
            kwargs = fix(processor, kwargs)
        out = processor(*args, **kwargs)
        if hasattr(out, "to") and isinstance(out, Mapping):
            out.__class__ = _device_fixed_class(type(out), session.model)
            if carrier is not None:
                spg = out.get("second_per_grid_ts")
                carrier.second_per_grid_ts = [float(s) for s in spg] if spg is not None else None
                out[CARRIER_KEY] = carrier
        return out


# ----------------------------------------------------------------------------------------------- the session
class TangoSession(HarnessSession):
    """Tango on one VLMEvalKit model instance: the handle, the frame-time channel, the report."""

    def __init__(self, owner: Any, name: str, config, options: dict, extras: dict) -> None:
        super().__init__(owner, name, config, options, extras)
        self.book = FrameBook(keep=16)
        self.model = None
        self.dataset: Optional[str] = None

    def install(self, model: Any) -> None:
        self.model = model
        if self.enabled:
            self.enable(model, {"generate": self._generate})
        self.write_report()

    def _generate(self, original, args, kwargs):
        kwargs = dict(kwargs)
        carrier = kwargs.pop(CARRIER_KEY, None)
        self.pass_frame_times(carrier, kwargs)
        out, notes = self.call_collecting_warnings(original, *args, **kwargs)
        self.record(carrier, notes)
        return out

    def record(self, carrier: Optional[FrameTimes], notes: Sequence[str]) -> None:
        self.calls += 1
        self.warnings.extend(notes)
        rows = (self.handle.report().get("samples") or []) if self.handle is not None else []
        videos = list(carrier.videos) if carrier is not None else []
        spg = carrier.second_per_grid_ts if carrier is not None else None
        passed = carrier.passed if carrier is not None else False
        for b, row in enumerate(rows or [{}]):
            entry = {"call": self.calls, "row": b, "dataset": self.dataset, **row}
            entry["videos"] = [video_entry(v, None if spg is None or i >= len(spg) else spg[i], passed)
                               for i, v in enumerate(videos)]
            entry["warnings"] = list(notes)
            self.records.append(entry)
        self.write_report()

    def summary_fields(self) -> dict:
        base = _vlmeval_base(type(self.owner))
        return {"vlmeval_class": f"{base.__module__}.{base.__qualname__}",
                "model_path": getattr(self.owner, "model_path", None)}


def _vlmeval_base(cls: type) -> type:
    return next((c for c in cls.__mro__ if c.__module__.startswith("vlmeval.")), cls)


# ----------------------------------------------------------------------------------------------- the mixin
class TangoVLMMixin:
    """First base of each Tango subclass of a VLMEvalKit model class: knobs, CPU fallback, tracing, report."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        name = type(self).__name__
        knobs, rest = split_knobs(kwargs)
        try:
            config, options, extras = config_from_knobs(knobs)
        except ValueError as err:  # before the checkpoint loads
            raise ValueError(f"{name}: bad tango knob: {err}") from None
        for flag in ("use_vllm", "use_lmdeploy"):
            if rest.get(flag):
                raise ValueError(f"{name}: {flag}=True is not supported: Tango prunes the transformers model "
                                 f"(leave {flag} unset)")
        attn = rest.pop("attn_implementation", None)
        base = _vlmeval_base(type(self))
        self._tango = TangoSession(self, name, config, options, extras)
        with _runnable_construction(base, attn):
            super().__init__(*args, **rest)
        self._tango.install(self.model)
        self.processor = ProcessorProxy(self.processor, self._tango)

    @property
    def tango_handle(self):
        """The `TangoHandle` of the model (None with `tango=False`)."""
        return self._tango.handle

    def generate(self, message, dataset=None):
        self._tango.dataset = dataset
        return super().generate(message, dataset=dataset)


class _QwenTracing:
    """Qwen2VLChat / Qwen3VLChat: qwen-vl-utils' `process_vision_info` records the frames while a sample runs."""

    def generate_inner_transformers(self, message, dataset=None):
        if not self._tango.enabled:
            return super().generate_inner_transformers(message, dataset=dataset)
        try:
            import qwen_vl_utils
        except ImportError:  # VLMEvalKit's own code reports it
            return super().generate_inner_transformers(message, dataset=dataset)
        real = qwen_vl_utils.process_vision_info
        if getattr(real, "tango_recorder", False):
            return super().generate_inner_transformers(message, dataset=dataset)
        with _swapped(qwen_vl_utils, "process_vision_info", recording_process_vision_info(real, self._tango.book)):
            return super().generate_inner_transformers(message, dataset=dataset)


class _LlavaTracing:
    """LLaVA_OneVision_HF: decord's `VideoReader` records the indices `load_video` takes."""

    def _tango_processor_kwargs(self, processor, kwargs: dict) -> dict:
        # VLMEvalKit's video prompt starts with an `<image>` placeholder and passes no image; transformers 4.x let
        # the stray token through, transformers 5 refuses the call ("Found 1 <image> tokens in the text but no
        # images were passed"). Without images, the placeholder is dropped: the prompt transformers 4 saw, less it.
        token = getattr(processor, "image_token", None)
        text = kwargs.get("text")
        if kwargs.get("images") is None and kwargs.get("videos") is not None and token and isinstance(text, str):
            kwargs = {**kwargs, "text": text.replace(token + "\n", "").replace(token, "")}
        return kwargs

    def load_video(self, video_path, max_frames_num, fps=1, force_sample=False):
        import decord

        calls: list = []
        with _swapped(decord, "VideoReader", recording_video_reader(decord.VideoReader, calls.append)):
            frames, frame_time, video_time = super().load_video(video_path, max_frames_num, fps=fps,
                                                                force_sample=force_sample)
        if calls:
            self._tango.book.add(frames, calls[-1])
        return frames, frame_time, video_time


_MIXINS = {"TangoQwen2VLChat": _QwenTracing, "TangoQwen3VLChat": _QwenTracing,
           "TangoLLaVA_OneVision_HF": _LlavaTracing}
_BUILT: Dict[str, type] = {}


def tango_class(name: str) -> type:
    """The Tango subclass `name` (a key of `CLASSES`), built on first use."""
    if name not in CLASSES:
        raise ValueError(f"unknown Tango VLMEvalKit class {name!r}; known: {', '.join(CLASSES)}")
    if name not in _BUILT:
        base = getattr(_vlmeval_vlm(), CLASSES[name])
        doc = (f"VLMEvalKit's `{CLASSES[name]}` with Tango pruning: the `tango_*` knobs as keyword arguments "
               "(`tango_plugin.knobs`), exact frame times, `tango_report=path.json`; everything else as the base.")
        _BUILT[name] = type(name, (TangoVLMMixin, _MIXINS[name], base),
                            {"__module__": __name__, "__qualname__": name, "__doc__": doc})
    return _BUILT[name]


def __getattr__(name: str) -> Any:
    if name in CLASSES:
        return tango_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------- registration
def register_supported_vlm(knobs: Optional[Mapping[str, Any]] = None, *, prefix: str = PREFIX) -> List[str]:
    """Add a `<prefix><name>` entry to `vlmeval.config.supported_VLM` for every entry built on `Qwen2VLChat`,
    `Qwen3VLChat` or `LLaVA_OneVision_HF` (same keywords, the Tango subclass), and the Tango classes to
    `vlmeval.vlm` (so run.py's `--config` files can name them as `"class"`).

    Args:
        knobs: `tango_*` knobs added to every new entry (e.g. `{"tango_ratio": 0.25, "tango_report": "r.json"}`);
            checked here, so a bad one fails before any model loads.
        prefix: prefix of the new names.

    Returns:
        the names added, sorted.

    Raises:
        ImportError: VLMEvalKit is not installed (the message says what to install).
        ValueError: a bad knob (named, with its value and the allowed ones).
    """
    knobs = dict(knobs or {})
    given, other = split_knobs(knobs)
    if other:
        raise ValueError(f"not tango knobs: {', '.join(f'{k}={v!r}' for k, v in other.items())}; "
                         "knobs are 'tango' and 'tango_*'")
    try:
        config_from_knobs(given)
    except ValueError as err:
        raise ValueError(f"register_supported_vlm: bad tango knob: {err}") from None
    vlm = _vlmeval_vlm()
    from vlmeval.config import supported_VLM

    bases = {getattr(vlm, base): name for name, base in CLASSES.items()}
    for name in CLASSES:
        setattr(vlm, name, tango_class(name))
    added = []
    for name, entry in list(supported_VLM.items()):
        func = getattr(entry, "func", None)
        if name.startswith(prefix) or func not in bases:
            continue
        cls = tango_class(bases[func])
        supported_VLM[prefix + name] = functools.partial(cls, *entry.args, **{**(entry.keywords or {}), **given})
        added.append(prefix + name)
    return sorted(added)


# ----------------------------------------------------------------------------------------------- the launcher
USAGE = """usage: python -m tango_plugin.patches.vlmevalkit run [--run-py PATH] [--tango-args KNOBS]
                  [--tango-import MOD] <VLMEvalKit run.py arguments>
       python -m tango_plugin.patches.vlmevalkit list

run   registers the tango_* models in VLMEvalKit's supported_VLM and runs VLMEvalKit's run.py with the other
      arguments, e.g. --data Video-MME --model tango_Qwen2.5-VL-7B-Instruct --mode infer
      --run-py PATH       VLMEvalKit's run.py (default: next to the installed `vlmeval` package, or $VLMEVALKIT_RUN_PY)
      --tango-args KNOBS  knobs for every tango_* model: tango_ratio=0.25,tango_report=report.json
      --tango-import MOD  import MOD first (repeatable), e.g. a module adding your own supported_VLM entries
list  prints the tango_* names that run would add
"""


def find_run_py(path: Optional[str] = None) -> str:
    """VLMEvalKit's `run.py`: `path`, else `$VLMEVALKIT_RUN_PY`, else the checkout `vlmeval` was installed from."""
    path = path or os.environ.get("VLMEVALKIT_RUN_PY")
    if path:
        if not os.path.isfile(path):
            raise ValueError(f"VLMEvalKit's run.py: {path} is not a file")
        return os.path.abspath(path)
    _vlmeval_vlm()
    import vlmeval

    candidate = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(vlmeval.__file__))), "run.py")
    if not os.path.isfile(candidate):
        raise ValueError(f"cannot find VLMEvalKit's run.py at {candidate} (it is not part of the installed package: "
                         "use an editable install of VLMEvalKit, or pass --run-py PATH)")
    return candidate


def parse_knob_text(text: str) -> Dict[str, str]:
    """`tango_ratio=0.25,tango_report=r.json` -> a dict (values as text; `tango_plugin.knobs` parses them)."""
    out: Dict[str, str] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise ValueError(f"--tango-args: {part!r} is not name=value")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _split_launcher_args(argv: Sequence[str]):
    own = {"--run-py": None, "--tango-args": None, "--tango-import": []}
    rest: List[str] = []
    it = iter(range(len(argv)))
    args = list(argv)
    for i in it:
        arg = args[i]
        key, _, inline = arg.partition("=")
        if key in own:
            if inline == "" and "=" not in arg:
                if i + 1 >= len(args):
                    raise ValueError(f"{key} needs a value")
                inline = args[i + 1]
                next(it)
            if key == "--tango-import":
                own[key].append(inline)
            else:
                own[key] = inline
        else:
            rest.append(arg)
    return own, rest


def run(argv: Sequence[str]) -> int:
    """Register the Tango entries, then run VLMEvalKit's run.py (as `__main__`) with `argv`."""
    import runpy

    own, rest = _split_launcher_args(argv)
    knobs = parse_knob_text(own["--tango-args"]) if own["--tango-args"] else {}
    run_py = find_run_py(own["--run-py"])
    for module in own["--tango-import"]:
        importlib.import_module(module)
    names = register_supported_vlm(knobs)
    print(f"tango_plugin: registered {len(names)} VLMEvalKit models ({', '.join(names[:3])}, ...)", file=sys.stderr)
    folder = os.path.dirname(run_py)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    old_argv = sys.argv
    sys.argv = [run_py, *rest]
    try:
        runpy.run_path(run_py, run_name="__main__")
    except SystemExit as stop:  # argparse errors and explicit exits of run.py
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = old_argv
    return 0


def main(argv: Optional[Iterable[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            return run(rest)
        if command == "list":
            own, extra = _split_launcher_args(rest)
            for module in own["--tango-import"]:
                importlib.import_module(module)
            print("\n".join(register_supported_vlm(parse_knob_text(own["--tango-args"] or ""))))
            return 0
    except (ImportError, ValueError) as err:
        print(f"tango_plugin: {err}", file=sys.stderr)
        return 2
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


__all__ = ["CLASSES", "PREFIX", "TangoVLMMixin", "TangoSession", "ProcessorProxy", "VideoFrames", "FrameTimes",
           "tango_class", "register_supported_vlm", "find_run_py", "parse_knob_text", "run", "main",
           "INSTALL_HINT"]

if __name__ == "__main__":  # the importable module's state, not a second copy of it under __main__
    from tango_plugin.patches.vlmevalkit import main as _main

    sys.exit(_main())
