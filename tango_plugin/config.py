"""`TangoConfig`: every knob of the method, validated on construction and on every assignment.

Defaults are the values the paper's run scripts use (listed in docs/algorithm.md). Each field carries a help
text and its check in its metadata; a bad value raises `ValueError` naming the field, the value and what is
allowed, whether it comes in through the constructor, `from_dict` / `from_json`, `replace` or
``cfg.field = value`` (a refused assignment leaves the config unchanged).

Numbers: any real scalar is accepted where a number is expected (`int`, `float`, `fractions.Fraction`, numpy
scalars of any width, 0-d torch tensors) and stored as a plain Python `float` / `int`, so that the config
stays JSON-serialisable and compares equal to its round trip. `bool` is refused (``True`` is not a ratio), and
so are strings ("0.1"): a number given as text is almost always a parsing bug upstream.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

DISTANCE_SCREENS = ("auto", "bfloat16", "float32", "off")
SEGMENTATIONS = ("holitom", "fastvid")
SALIENCY_SOURCES = ("auto", "global_query", "siglip_head", "attention_received")

# Finite upper bounds where the natural range is open-ended (inf overflows later, e.g. `int(alpha * k)`):
# - alpha: the salient pick takes min(int(alpha * k), n) candidates of a frame's n tokens, so every alpha above
#   the largest token count of a frame behaves the same ("all tokens are candidates"). No frame comes near a
#   million tokens (Qwen2-VL's largest grids have ~16k), so 1e6 loses nothing and keeps alpha * k far from overflow.
# - base_time / base_space: the ST-RoPE frequency table is computed in float32 (`engine.strope._inv_freq`); a
#   base beyond float32's largest value (~3.4e38) becomes inf there and silently switches the rotation off.
ALPHA_MAX = 1e6
ROPE_BASE_MAX = 1e38

Check = Callable[[str, Any], Any]


def _help(text: str, check: Optional[Check] = None, details: str = "", **kwargs) -> Any:
    """A field with its one-line `help` (CLI, knob tables) and the `details` the class docstring adds to it: the one
    place a field is described (`_document_fields` writes the docstring from them)."""
    return field(metadata={"help": text, "details": details, "check": check}, **kwargs)


# ------------------------------------------------------------------------------------------ number parsing
def _torch_scalar(value: Any):
    """`value` if it is a 0-d torch tensor, else None; torch is only looked up if the caller already imported
    it (a tensor cannot exist otherwise), so the config never imports torch itself."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor) and value.dim() == 0:
        return value
    return None


def _numpy_0d(value: Any) -> Any:
    """The scalar inside a 0-d numpy array (``np.array(0.1)``, e.g. from `np.asarray`), else `value`."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item") \
            and not isinstance(value, numbers.Number):
        return value[()]
    return value


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"))


def _show(value: Any) -> str:
    """repr for messages, cut short (a huge int or a long list would bury the message)."""
    text = repr(value)
    return text if len(text) <= 120 else text[:100] + "..."


def _shortest_decimal(x: float, same: Callable[[float], bool]) -> float:
    """The shortest decimal that `same` maps back to the source value, as a float; `x` itself if none is shorter.

    Why: a float32 scalar holds 0.1 as 0.100000001490116..., and storing that exact value would flip rules that
    compare with the decimal the user wrote (`retention_ratio <= 0.1` picks the 0.65 threshold) and show up as
    noise in JSON. The shortest round-tripping decimal is what numpy prints for the scalar, i.e. what was meant.
    """
    if not math.isfinite(x):
        return x
    for digits in range(1, 18):
        y = float(f"{x:.{digits}g}")
        if same(y):
            return y
    return x


def _as_real(value: Any) -> Optional[float]:
    """`value` as a plain float if it is a real scalar (not bool, not text), else None."""
    value = _numpy_0d(value)
    if _is_bool(value):  # True is not a ratio
        return None
    t = _torch_scalar(value)
    if t is not None:
        if t.dtype.is_complex or t.dtype == sys.modules["torch"].bool:
            return None
        x = float(t.item())
        if t.is_floating_point() and t.dtype.itemsize < 8:
            torch = sys.modules["torch"]
            return _shortest_decimal(x, lambda y: torch.tensor(y, dtype=t.dtype).item() == x)
        return x
    if not isinstance(value, numbers.Real):
        return None
    try:
        x = float(value)
    except (OverflowError, ValueError):  # an int beyond float's range
        return None
    dtype = getattr(value, "dtype", None)  # numpy scalars: float16 / float32 get the shortest decimal
    if dtype is not None and getattr(dtype, "kind", "") == "f" and dtype.itemsize < 8:
        return _shortest_decimal(x, lambda y: type(value)(y) == value)
    return x


def _as_int(value: Any) -> Optional[int]:
    """`value` as a plain int if it is an integer scalar (int, numpy integer, 0-d integer tensor), else None.

    Floats are refused even when integral (2.0): a count given as a float usually comes from arithmetic that
    should have rounded explicitly.
    """
    value = _numpy_0d(value)
    if _is_bool(value):
        return None
    t = _torch_scalar(value)
    if t is not None:
        if t.is_floating_point() or t.dtype.is_complex or t.dtype == sys.modules["torch"].bool:
            return None
        return int(t.item())
    if isinstance(value, numbers.Integral):
        return int(value)
    return None


def _not_a_number_hint(value: Any) -> str:
    if isinstance(value, (str, bytes)):
        return " (got text; pass a number, not a string)"
    if _is_bool(value):
        return " (got a bool)"
    if hasattr(value, "shape") and len(getattr(value, "shape", ())) > 0:
        return f" (got an array of shape {tuple(value.shape)}; pass a single value)"
    return ""


# ------------------------------------------------------------------------------------------------ checks
def _check_range(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    """`value` as a float in [low, high] (or (low, high]), else `ValueError`; NaN and text are refused."""
    bracket = "(" if low_open else "["
    allowed = f"a number in {bracket}{low}, {high}]"
    x = _as_real(value)
    if x is None or math.isnan(x):
        raise ValueError(f"{name}={_show(value)} is not allowed; expected {allowed}{_not_a_number_hint(value)}")
    if x < low or (low_open and x == low) or x > high:
        raise ValueError(f"{name}={_show(value)} is out of range; expected {allowed}")
    return x


def _check_int(name: str, value: Any, low: int) -> int:
    """`value` as an int >= low, else `ValueError` (bool and floats, even integral ones, are refused)."""
    n = _as_int(value)
    if n is None or n < low:
        hint = _not_a_number_hint(value)
        raise ValueError(f"{name}={_show(value)} is not allowed; expected an integer >= {low}{hint}")
    return n


def real_in_range(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    """`value` (any real scalar: Python, numpy, 0-d tensor) as a plain float in [low, high] (or (low, high]), else a
    `ValueError` naming `name`, the value and the range; the coercion every `TangoConfig` field uses."""
    return _check_range(name, value, low, high, low_open)


def integer_at_least(name: str, value: Any, low: int) -> int:
    """`value` (an integer scalar) as a plain int >= low, else a `ValueError` naming `name`, the value and `low`."""
    return _check_int(name, value, low)


def _range(low: float, high: float, low_open: bool = False) -> Check:
    return lambda name, value: _check_range(name, value, low, high, low_open)


def _integer(low: int) -> Check:
    return lambda name, value: _check_int(name, value, low)


def _optional(check: Check) -> Check:
    return lambda name, value: None if value is None else check(name, value)


def _choice(allowed: tuple) -> Check:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name}={_show(value)} is not supported; allowed: {list(allowed)}")
        return value

    return check


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={_show(value)} must be True or False")
    return value


def _strategy_name(name: str, value: Any) -> str:
    # Only the form is checked here: the registry lives in a higher layer, and a config may legitimately be
    # built (or loaded from JSON) before the module that registers its strategy is imported. The name is
    # resolved, with the list of registered strategies in the error, when the strategy is looked up.
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}={_show(value)} must be a non-empty strategy name")
    return value


def _sink_positions(name: str, value: Any) -> Optional[list]:
    if value is None:
        return None
    allowed = "None or a list of non-negative integer grid indices"
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable) or _torch_scalar(value) is not None:
        raise ValueError(f"{name}={_show(value)} is not allowed; expected {allowed}")
    try:
        items = list(value)
    except TypeError:  # e.g. a 0-d numpy array: iterable by type, not by value
        raise ValueError(f"{name}={_show(value)} is not allowed; expected {allowed}") from None
    out = []
    for p in items:
        n = _as_int(p)
        if n is None or n < 0:
            raise ValueError(f"{name}={_show(value)} must hold non-negative integer grid indices; got {_show(p)}")
        out.append(n)
    return out


def _strategy_options(name: str, value: Any) -> Optional[dict]:
    # Which keys a strategy takes is the strategy's business (it names the unknown ones when it runs); here the
    # form: a mapping of option names to plain JSON values, so the config still round-trips through JSON.
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}={_show(value)} must be None or a dict of option name -> value")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{name}={_show(value)}: option names must be non-empty strings; got {_show(key)}")
        if isinstance(item, (list, tuple)):
            item = list(item)
        if not (item is None or isinstance(item, (bool, int, float, str)) or (
                isinstance(item, list) and all(isinstance(x, (bool, int, float, str)) for x in item))):
            raise ValueError(f"{name}[{key!r}]={_show(item)} must be a number, a string, a bool, None or a list of "
                             "those")
        out[key] = item
    return out


def _folder(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"{name}={_show(value)} must be a folder path (str or os.PathLike) or None")
    return value


def _default_similarity_threshold(retention_ratio: float) -> float:
    """The paper's rule for `similarity_threshold=None`."""
    return 0.65 if retention_ratio <= 0.1 else 0.8


@dataclass
class TangoConfig:
    """Settings of one pruning run.

    Every field is checked when it is set, at construction and on assignment (``cfg.retention_ratio = 0.2``);
    a refused value raises `ValueError` and leaves the config as it was. Numbers may be any real scalar
    (Python, numpy, 0-d torch tensor; not bool, not text) and are stored as plain Python floats / ints.

    Fields (each one's text is its `help` metadata, followed by its `details`; `TangoConfig.help()` lists them):

{fields}

    Example:
        ```python
        >>> cfg = TangoConfig(retention_ratio=0.15)
        >>> cfg.similarity_threshold
        0.8
        >>> cfg.retention_ratio = 0.0
        Traceback (most recent call last):
        ValueError: retention_ratio=0.0 is out of range; expected a number in (0.0, 1.0]
        ```
    """

    retention_ratio: float = _help(
        "fraction of video tokens kept before the LLM, in (0, 1]", _range(0.0, 1.0, low_open=True), default=0.1,
        details="1.0 disables pruning.")
    context_ratio: float = _help(
        "share of each frame's budget given to merged context tokens, in [0, 1]", _range(0.0, 1.0), default=0.4,
        details="The rest of the budget goes to salient tokens.")
    similarity_threshold: Optional[float] = _help(
        "segmentation threshold in [-1, 1]; None -> 0.65 if retention_ratio <= 0.1 else 0.8",
        _optional(_range(-1.0, 1.0)), default=None,
        details=(
            "The rule is applied when the field is set to None (at construction, by `replace` when retention_ratio "
            "changes, or by assigning None); assigning a new retention_ratio alone keeps the current threshold."))
    static_threshold: float = _help(
        "static-token cosine threshold in [-1, 1] (reference: always 0.8)", _range(-1.0, 1.0), default=0.8,
        details=(
            "A token is static when its cosine with itself in the next frame stays above it over a whole segment. The"
            " reference never passes its configured threshold to this test, so it is always 0.8 there."))
    alpha: float = _help(
        "salient candidate expansion, in [1, 1e6]", _range(1.0, ALPHA_MAX), default=1.5,
        details=(
            "The salient pick takes the top ``int(alpha * k)`` tokens by score, then k clusters; values above a "
            "frame's token count all mean \"every token is a candidate\"."))
    beta: float = _help(
        "minimum weight of an anchor in a context merge, in [0, 1]", _range(0.0, 1.0), default=0.6)
    num_neighbors: int = _help(
        "k of the DPC-KNN density, >= 1", _integer(1), default=7)
    segmentation: str = _help(
        "temporal segmentation: 'holitom' or 'fastvid'", _choice(SEGMENTATIONS), default="holitom",
        details="'holitom': a dynamic programme over static tokens; 'fastvid': cuts at the least similar frame pairs.")
    fastvid_min_cuts: int = _help(
        "fastvid: number of segments forced by the lowest similarities, >= 1", _integer(1), default=8,
        details="The ``c - 1`` lowest similarities are always cut.")
    holitom_max_window: int = _help(
        "holitom: longest segment in frames, >= 1", _integer(1), default=1024)
    base_time: float = _help(
        "ST-RoPE base of the time section, in (1, 1e38]", _range(1.0, ROPE_BASE_MAX, low_open=True), default=10000.0,
        details="The frequency table is float32.")
    base_space: float = _help(
        "ST-RoPE base of the height and width sections, in (1, 1e38]", _range(1.0, ROPE_BASE_MAX, low_open=True),
        default=1000.0)
    sink_positions: Optional[list] = _help(
        "grid indices whose saliency is zeroed; None = adapter preset", _sink_positions, default=None,
        details="Attention sinks. An explicit list (also empty) overrides the adapter's preset.")
    strategy: str = _help(
        "registered pruning strategy name", _strategy_name, default="tango",
        details=(
            "Only its form is checked here (a non-empty string): strategies can be registered after the config is "
            "made, so an unknown name is reported, with the registered ones, when the strategy is looked up."))
    saliency_source: str = _help(
        "attention signal: " + ", ".join(SALIENCY_SOURCES), _choice(SALIENCY_SOURCES), default="auto",
        details="'auto' lets the adapter decide.")
    siglip_head_path: Optional[str] = _help(
        "local SigLIP checkpoint folder for the attention-pooling head", _folder, default=None,
        details="Its attention-pooling head scores LLaVA-OV frames (saliency_source='siglip_head').")
    prune_images: bool = _help(
        "also prune still images as single-frame videos (Qwen-VL: the whole image; LLaVA-OV: the base grid)", _flag,
        default=False, details=(
            "Each image is a single-frame video (T=1): it keeps ceil(L * r) tokens. LLaVA-OV's high-res crops pass "
            "through unpruned."))
    reference_merge_order: bool = _help(
        "reproduce the reference's context-merge write order (merged values land on anchors in density order, "
        "not on their own anchor); the kept set is the same either way", _flag, default=False,
        details=(
            "The paper's context merge computes each anchor's merged vector but stores it on the anchors taken in "
            "density order. Off by default (each anchor keeps its own merge); on to reproduce the paper's numbers."))
    max_block_elements: int = _help(
        "elements per block of the blocked distance matrix, >= 1024", _integer(1024), default=1 << 24,
        details="The memory bound of the distance computations (docs/algorithm.md §5).")
    distance_screen: str = _help(
        "large point sets: canonical distances screened in 'auto', 'bfloat16' or "
        "'float32' (the same plan), or 'off' (float32 tiles)", _choice(DISTANCE_SCREENS), default="auto",
        details=(
            "Point sets larger than one distance tile (a long segment's context pool) decide on canonical distances, "
            "refined exactly where a screening product in that dtype cannot decide ('auto': bfloat16 where it is fast"
            " here); all three give the same plan. 'off': float32 tile products decide directly (it can differ in "
            "last-bit ties). docs/algorithm.md §11."))
    intra_llm_layer: Optional[int] = _help(
        "intra-LLM stage: first decoder layer that sees the reduced sequence (layer K-1 scores); None = off",
        _optional(_integer(1)), default=None,
        details=(
            "K of the intra-LLM stage of the LLaVA-Video runs (docs/algorithm.md §6). Layers 0..K-1 see the whole "
            "prompt; before layer K each video keeps the `round(n * intra_llm_ratio)` tokens the last prompt token "
            "attends to most in layer K-1 and the rest are merged into them. The reference uses K = 18 of 28. Applied"
            " in `generate` only; must be below the model's depth (checked at `enable`)."))
    intra_llm_ratio: float = _help(
        "intra-LLM stage: share of each video's tokens kept, in (0, 1]", _range(0.0, 1.0, low_open=True), default=0.5,
        details="Reference: 0.5.")
    strategy_options: Optional[dict] = _help(
        "options of the chosen strategy (e.g. {'seed': 3} for 'random'); each strategy lists its own "
        "(docs/strategies.md)", _strategy_options, default=None,
        details="A dict; the strategy refuses keys it does not know.")
    exact_budget: bool = _help(
        "keep exactly T * max(1, ceil(L * r)) tokens per video for every strategy (topped up with the most salient "
        "unkept tokens or trimmed by lowest saliency; docs/algorithm.md, exact-count budget)", _flag, default=False,
        details=(
            "The kept count is then known before the vision tower runs (`engine.budgets.exact_keep_count`). Off by "
            "default: Tango's own count depends on the content (static tokens are kept once per segment)."))

    # ----------------------------------------------------------- validation on every assignment
    def __setattr__(self, name: str, value: Any) -> None:
        # The dataclass __init__ assigns each field in order, so this one hook validates construction,
        # `dataclasses.replace` and later assignments alike. Copies and pickles restore __dict__ directly
        # (values that were already checked), so they do not come through here.
        spec = type(self).__dataclass_fields__.get(name)
        if spec is None:
            if not name.startswith("_"):  # a typo such as `cfg.retention = 0.2` would otherwise do nothing
                raise AttributeError(f"TangoConfig has no field {name!r}; fields: "
                                     f"{[f.name for f in dataclasses.fields(self)]}")
            object.__setattr__(self, name, value)
            return
        if name == "similarity_threshold" and value is None and "retention_ratio" in self.__dict__:
            value = _default_similarity_threshold(self.retention_ratio)
        check = spec.metadata.get("check")
        object.__setattr__(self, name, check(name, value) if check is not None else value)

    def __delattr__(self, name: str) -> None:
        if name in type(self).__dataclass_fields__:
            raise AttributeError(f"TangoConfig field {name!r} cannot be deleted; assign a value instead")
        object.__delattr__(self, name)

    def __post_init__(self) -> None:
        # similarity_threshold=None is resolved on assignment once retention_ratio is set, which comes first in
        # this class; this catches a subclass that orders the fields otherwise.
        if self.similarity_threshold is None:
            self.similarity_threshold = _default_similarity_threshold(self.retention_ratio)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise `ValueError` for the first field whose value is outside its allowed range.

        Assignment already checks each value; this re-checks all of them, for configs whose `__dict__` was
        written directly (`object.__setattr__`, a hand-edited pickle).
        """
        for spec in dataclasses.fields(self):
            check = spec.metadata.get("check")
            value = getattr(self, spec.name)
            if spec.name == "similarity_threshold" and value is None:
                raise ValueError("similarity_threshold=None was not resolved; expected a number in [-1.0, 1.0]")
            if check is not None:
                check(spec.name, value)

    # ----------------------------------------------------------- conversions
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "TangoConfig":
        """A config from a mapping of field names to values (unknown names are refused)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"data={_show(data)} is not allowed; expected a dict of TangoConfig field names to "
                             "values")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted((k for k in data if k not in known), key=repr)  # repr: keys need not be str
        if unknown:
            raise ValueError(f"unknown TangoConfig field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TangoConfig":
        """A config from the JSON text of `to_json` (an object of field names to values)."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise ValueError(f"text={_show(text)} is not allowed; expected a JSON string")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"text is not valid JSON ({err}); expected an object of TangoConfig fields") from None
        return cls.from_dict(data)

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
    def help() -> dict:
        """Field name -> help text."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TangoConfig)}


def _document_fields(cls: type) -> None:
    """Write the fields' `help` and `details` into the class docstring (its `{fields}` slot): each field is
    described once, where it is declared."""
    import textwrap

    entries = []
    for f in dataclasses.fields(cls):
        text = f.metadata["help"] + (". " + f.metadata["details"] if f.metadata.get("details") else "")
        entries.append(textwrap.fill(f"{f.name}: {text}", width=116, initial_indent="        ",
                                     subsequent_indent="            "))
    if cls.__doc__:  # None under python -OO
        cls.__doc__ = cls.__doc__.replace("{fields}", "\n".join(entries))


_document_fields(TangoConfig)

# A field added without a check would silently accept anything on assignment.
_UNCHECKED = [f.name for f in dataclasses.fields(TangoConfig) if f.metadata.get("check") is None]
if _UNCHECKED:  # pragma: no cover - guards future edits
    raise RuntimeError(f"TangoConfig fields without a check: {_UNCHECKED}")
