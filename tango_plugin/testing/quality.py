"""A download-free quality benchmark: generated video-QA whose answers depend on where and when things happen.

Each clip is `STEPS` time steps of a `GRID` x `GRID`-token frame (one engine frame per step in every family: Qwen
models get each step twice, one temporal patch, LLaVA-OV once) over a static, grey, slightly noisy
background with two black squares drifting about as distractors. The tasks (`TASKS`; "spot": a `SPOT` x `SPOT`-token
square, 4 of the 36 tokens of a frame, about the per-frame budget at ratio 0.1):

| task | question | answers | the evidence (tokens that must reach the LLM) |
|---|---|---|---|
| needle | what colour was the small square? | red green blue | one coloured spot, visible in 2-4 of the 8 steps |
| order | which colour came first? | red green blue | two coloured spots flashed at two different steps |
| count | how many times did the light flash? | 1 2 3 | one white spot lit in 1-3 separated steps |
| final | where did the square end up? | left right | a one-token square moving from a random start to a random end |
| direction | which way did the square move? | left right up down | a one-token square moving 3 cells in a line |

Every item has one known answer, and the answers of a task start with different tokens, so a model is scored by the
logits of those first tokens at the last prompt position (`score_batch`). Tiny random models of a family
(`tango_plugin.testing.tiny_models`, patch sizes halved so a frame has `GRID * GRID` video tokens) are fully fine-tuned
on fresh clips with every token (`train_model`) and cached by family, suite version and training settings
(`cache_path`). `evaluate` then runs any strategy through `tango_plugin.enable` with the exact frame times and
records, from the strategy's plans, how much of each item's evidence was kept (`evidence`: the share of evidence
tokens whose index is kept; merged tokens may carry dropped tokens' content, so for merging strategies this is a
lower bound of what reaches the LLM).

Controls (`extra_strategies`, registered only inside the context manager, names starting with `test_` so that the
matrix skips them even if one leaked): `test_least_salient` keeps each frame's least salient tokens,
`test_first_frames` keeps whole frames from the start only; `test_tango_inverted` / `test_tango_random` run Tango
on inverted / random saliency (a mutated Tango that ignores what the tower attends to).

`benchmarks/quality.py` is the command; docs/generalization.md has the measured table and how to read it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

#: bump when the clips, questions or answers change: cached models of another version are not reused
SUITE_VERSION = 4
#: time steps per clip (engine frames)
STEPS = 8
#: tokens per side of one frame: GRID * GRID video tokens per frame
GRID = 6
#: side, in tokens, of the needle, the flashes of `order` and the light of `count` (a square of SPOT * SPOT tokens)
SPOT = 2
#: the needle is visible in this many consecutive steps (inclusive range; 1-2 steps of 8 were not learned by the
#: tiny models in a few hundred training clips, 8 of 8 in about 20 steps of 8 clips)
NEEDLE_STEPS = (2, 4)
#: seconds per step: frame k of a clip is at k * SECONDS_PER_STEP / frames_per_step seconds
SECONDS_PER_STEP = 1.0
#: first seed of the training clips and of the evaluation clips (disjoint ranges)
TRAIN_SEED = 1_000_000
EVAL_SEED = 0

COLOURS = {"red": (1.0, -0.8, -0.8), "green": (-0.8, 1.0, -0.8), "blue": (-0.8, -0.8, 1.0)}
WHITE = (1.0, 1.0, 1.0)
BLACK = (-0.9, -0.9, -0.9)


# ---------------------------------------------------------------------------------------------------------------
# the model families
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """How one model family sees a clip.

    Args:
        model_type: the `tiny_models` recipe.
        style: tokenizer style ("qwen" / "llava").
        cell: pixels per video-token side (Qwen2-VL: 14 px patches merged 2 x 2; Qwen3-VL: 16 px x 2; LLaVA-OV:
            14 px patches pooled 2 x 2).
        frames_per_step: video frames per engine frame (Qwen: a temporal patch of 2 frames; LLaVA-OV: 1).
        vision: vision-config overrides that make the tower accept `GRID * cell` pixel frames.
    """

    model_type: str
    style: str
    cell: int
    frames_per_step: int
    vision: Tuple[Tuple[str, int], ...] = ()

    @property
    def size(self) -> int:
        return GRID * self.cell

    @property
    def fps(self) -> float:
        return self.frames_per_step / SECONDS_PER_STEP


FAMILIES: Dict[str, Family] = {
    "qwen2_vl": Family("qwen2_vl", "qwen", 14, 2, (("patch_size", 7),)),
    "qwen2_5_vl": Family("qwen2_5_vl", "qwen", 14, 2, (("patch_size", 7), ("window_size", 28))),
    "llava_onevision": Family("llava_onevision", "llava", 14, 1, (("patch_size", 7), ("image_size", GRID * 14))),
    "qwen3_vl": Family("qwen3_vl", "qwen", 16, 2, (("patch_size", 8),)),
}
DEFAULT_FAMILIES = ("qwen2_vl", "llava_onevision", "qwen3_vl")


# ---------------------------------------------------------------------------------------------------------------
# the clips
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Canvas:
    """A clip being drawn: `steps` frames of `GRID * cell` pixels and, per step and token, whether that token shows
    the evidence of the answer."""

    cell: int
    steps: int = STEPS
    frames: torch.Tensor = field(init=False)
    evidence: torch.Tensor = field(init=False)

    def __post_init__(self):
        size = GRID * self.cell
        self.frames = torch.zeros(self.steps, 3, size, size)
        self.evidence = torch.zeros(self.steps, GRID, GRID, dtype=torch.bool)

    def paint(self, step: int, y: float, x: float, colour: Sequence[float], evidence: bool, side: float = 1.0):
        """A `side`-cell square with its top-left corner at cell coordinates (y, x); marks the tokens it covers by
        at least a quarter as evidence when `evidence`."""
        c, size = self.cell, GRID * self.cell
        y0, x0 = max(0, round(y * c)), max(0, round(x * c))
        y1, x1 = min(size, round((y + side) * c)), min(size, round((x + side) * c))
        if y1 <= y0 or x1 <= x0:
            return
        self.frames[step, :, y0:y1, x0:x1] = torch.tensor(colour)[:, None, None]
        if evidence:
            cover = torch.zeros(size, size)
            cover[y0:y1, x0:x1] = 1
            share = cover.reshape(GRID, c, GRID, c).mean(dim=(1, 3))
            self.evidence[step] |= share >= 0.25


def _rand(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=g))


def _background(g: torch.Generator, canvas: Canvas) -> None:
    """A static, smooth, grey texture plus a little per-frame noise, and two black distractor squares that
    drift in straight lines: the scene is never empty, so finding the evidence is a real search."""
    size = GRID * canvas.cell
    low = (torch.rand(1, 4, 4, generator=g) * 0.6 - 0.3).expand(3, -1, -1)[None]  # grey: colour is evidence only
    base = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]
    noise = 0.02 * torch.randn(canvas.steps, 3, size, size, generator=g)
    canvas.frames[:] = base[None] + noise
    for _ in range(2):
        y, x = _rand(g, 0, GRID - 1), _rand(g, 0, GRID - 1)
        dy, dx = _rand(g, -0.5, 0.5), _rand(g, -0.5, 0.5)
        for s in range(canvas.steps):
            canvas.paint(s, min(max(y + s * dy, 0), GRID - 1), min(max(x + s * dx, 0), GRID - 1), BLACK, False)


def _needle(g: torch.Generator, canvas: Canvas) -> str:
    colour = sorted(COLOURS)[_randint(g, 0, 3)]
    shown = _randint(g, NEEDLE_STEPS[0], NEEDLE_STEPS[1] + 1)
    start = _randint(g, 0, canvas.steps - shown + 1)
    y, x = _randint(g, 0, GRID - SPOT + 1), _randint(g, 0, GRID - SPOT + 1)
    for s in range(start, start + shown):
        canvas.paint(s, y, x, COLOURS[colour], True, side=SPOT)
    return colour


def _order(g: torch.Generator, canvas: Canvas) -> str:
    names = sorted(COLOURS)
    first = names[_randint(g, 0, 3)]
    second = [n for n in names if n != first][_randint(g, 0, 2)]
    t1 = _randint(g, 0, canvas.steps - 1)
    t2 = _randint(g, t1 + 1, canvas.steps)
    for colour, t in ((first, t1), (second, t2)):
        canvas.paint(t, _randint(g, 0, GRID - SPOT + 1), _randint(g, 0, GRID - SPOT + 1), COLOURS[colour], True,
                     side=SPOT)
    return first


def _count(g: torch.Generator, canvas: Canvas) -> str:
    n = _randint(g, 1, 4)
    while True:  # n steps, no two adjacent, so every flash is its own event
        steps = sorted(torch.randperm(canvas.steps, generator=g)[:n].tolist())
        if all(b - a >= 2 for a, b in zip(steps, steps[1:])):
            break
    y, x = _randint(g, 0, GRID - SPOT + 1), _randint(g, 0, GRID - SPOT + 1)
    for s in steps:
        canvas.paint(s, y, x, WHITE, True, side=SPOT)
    return str(n)


def _moving(canvas: Canvas, colour: str, start: Tuple[float, float], end: Tuple[float, float]) -> None:
    for s in range(canvas.steps):
        a = s / (canvas.steps - 1)
        canvas.paint(s, start[0] + a * (end[0] - start[0]), start[1] + a * (end[1] - start[1]), COLOURS[colour], True)


def _final(g: torch.Generator, canvas: Canvas) -> str:
    colour = sorted(COLOURS)[_randint(g, 0, 3)]
    side = ("left", "right")[_randint(g, 0, 2)]
    start = (_rand(g, 0, GRID - 1), _rand(g, 0, GRID - 1))
    half = GRID / 2
    x1 = _rand(g, 0, half - 1.5) if side == "left" else _rand(g, half + 0.5, GRID - 1)
    _moving(canvas, colour, start, (_rand(g, 0, GRID - 1), x1))
    return side


def _direction(g: torch.Generator, canvas: Canvas) -> str:
    colour = sorted(COLOURS)[_randint(g, 0, 3)]
    way = ("left", "right", "up", "down")[_randint(g, 0, 4)]
    dist = GRID / 2
    along = _rand(g, 0, GRID - 1 - dist)  # the start on the moving axis, leaving room for the move
    across = _rand(g, 0, GRID - 1)
    sign = 1 if way in ("right", "down") else -1
    a0 = along if sign > 0 else along + dist
    a1 = a0 + sign * dist
    if way in ("left", "right"):
        _moving(canvas, colour, (across, a0), (across, a1))
    else:
        _moving(canvas, colour, (a0, across), (a1, across))
    return way


@dataclass(frozen=True)
class Task:
    name: str
    question: str
    answers: Tuple[str, ...]
    draw: Callable[[torch.Generator, Canvas], str]

    @property
    def chance(self) -> float:
        return 1.0 / len(self.answers)


TASKS: Dict[str, Task] = {t.name: t for t in (
    Task("needle", "what colour was the small square?", ("red", "green", "blue"), _needle),
    Task("order", "which colour came first?", ("red", "green", "blue"), _order),
    Task("count", "how many times did the light flash?", ("1", "2", "3"), _count),
    Task("final", "where did the square end up?", ("left", "right"), _final),
    Task("direction", "which way did the square move?", ("left", "right", "up", "down"), _direction),
)}


@dataclass
class Item:
    """One question: the clip's steps (STEPS, 3, size, size) in [-1, 1], the evidence mask (STEPS, GRID * GRID),
    the task and the answer."""

    task: str
    seed: int
    frames: torch.Tensor
    evidence: torch.Tensor
    answer: str


def make_item(task: str, seed: int, cell: int) -> Item:
    """The clip of `task` for `seed` at `cell` pixels per token: the same seed gives the same clip and answer in
    every family (only the pixel scale differs)."""
    spec = TASKS[task]
    g = torch.Generator().manual_seed(seed * 7919 + sorted(TASKS).index(task))
    canvas = Canvas(cell)
    _background(g, canvas)
    answer = spec.draw(g, canvas)
    return Item(task, seed, canvas.frames.clamp(-1, 1), canvas.evidence.reshape(canvas.steps, GRID * GRID), answer)


def make_items(tasks: Sequence[str], samples: int, cell: int, first_seed: int = EVAL_SEED) -> List[Item]:
    """`samples` items per task, seeds `first_seed ..`, tasks interleaved."""
    return [make_item(t, first_seed + i, cell) for i in range(samples) for t in tasks]


# ---------------------------------------------------------------------------------------------------------------
# model inputs and scoring
# ---------------------------------------------------------------------------------------------------------------


def build(family: str, seed: int = 0):
    """(model, tokenizer) of a fresh tiny random model of `family` that takes `GRID * cell` pixel frames."""
    from . import tiny_models

    fam = FAMILIES[family]
    tok = tiny_models.build_tokenizer(fam.style, padding_side="left")
    model = tiny_models.build_model(fam.model_type, tok, seed=seed, **dict(fam.vision))
    return model, tok


def batch_inputs(model, tok, family: str, items: Sequence[Item]) -> dict:
    """Model inputs for `items`, left-padded (the last position is every row's last prompt token)."""
    from . import tiny_models

    fam = FAMILIES[family]
    media = [[tiny_models.VideoSpec(frames=STEPS * fam.frames_per_step, size=fam.size,
                                    pixels=it.frames.repeat_interleave(fam.frames_per_step, dim=0))]
             for it in items]
    prompts = [TASKS[it.task].question for it in items]
    return tiny_models.video_inputs(model, tok, media, prompts, padding_side="left")


def answer_ids(tok, task: str) -> List[int]:
    """The first token of each answer of `task`; they must differ, or the logits could not tell answers apart."""
    ids = [tok(a, add_special_tokens=False)["input_ids"][0] for a in TASKS[task].answers]
    if len(set(ids)) != len(ids):
        raise ValueError(f"task {task!r}: answers {TASKS[task].answers} share a first token ({ids})")
    return ids


def score_batch(model, tok, family: str, items: Sequence[Item]) -> List[bool]:
    """Whether each item's answer has the highest first-token logit among its task's answers (one forward)."""
    inputs = batch_inputs(model, tok, family, items)
    logits = model(**inputs, logits_to_keep=1).logits[:, -1].float()
    right = []
    for row, it in enumerate(items):
        ids = answer_ids(tok, it.task)
        pick = int(logits[row, ids].argmax())
        right.append(TASKS[it.task].answers[pick] == it.answer)
    return right


# ---------------------------------------------------------------------------------------------------------------
# training and the cache
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Full fine-tuning of every weight (tower, projector, LLM) on fresh clips of `tasks`, every token kept."""

    tasks: Tuple[str, ...] = tuple(TASKS)
    steps: int = 800
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 10
    seed: int = 0
    #: held-out clips per task scored after training (seeds EVAL_SEED + 10**5 ..., not the benchmark's)
    check_samples: int = 24


def cache_key(family: str, settings: TrainSettings) -> str:
    """A folder name that changes whenever the family, the suite version or a training setting changes."""
    blob = json.dumps({"suite": SUITE_VERSION, "family": dataclasses.asdict(FAMILIES[family]),
                       "grid": GRID, "steps": STEPS, "train": dataclasses.asdict(settings)}, sort_keys=True)
    return f"{family}-v{SUITE_VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def default_cache() -> Path:
    return Path(os.environ.get("TANGO_QUALITY_CACHE", Path.home() / ".cache" / "tango_plugin" / "quality"))


def cache_path(family: str, settings: TrainSettings, cache: Optional[os.PathLike] = None) -> Path:
    return Path(cache if cache is not None else default_cache()) / cache_key(family, settings)


def _lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    a = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * a)))


def train(model, tok, family: str, settings: TrainSettings, log: Optional[Callable[[str], None]] = None) -> dict:
    """Fine-tune every weight on fresh clips (never the same clip twice); the loss is the cross-entropy of the
    answer among its task's answers (the first-token logits at the last prompt position, as `score_batch` reads
    them); every token kept. Returns the training record."""
    fam = FAMILIES[family]
    torch.manual_seed(settings.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    losses, started = [], time.perf_counter()
    n_tasks = len(settings.tasks)
    ids = {t: answer_ids(tok, t) for t in settings.tasks}
    for step in range(settings.steps):
        seeds = [TRAIN_SEED + step * settings.batch + j for j in range(settings.batch)]
        items = [make_item(settings.tasks[(step * settings.batch + j) % n_tasks], s, fam.cell)
                 for j, s in enumerate(seeds)]
        inputs = batch_inputs(model, tok, family, items)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, settings)
        logits = model(**inputs, logits_to_keep=1).logits[:, -1].float()
        loss = torch.stack([
            torch.nn.functional.cross_entropy(logits[row, ids[it.task]][None],
                                              torch.tensor([TASKS[it.task].answers.index(it.answer)]))
            for row, it in enumerate(items)]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log and (step + 1) % max(1, settings.steps // 10) == 0:
            recent = sum(losses[-10:]) / len(losses[-10:])
            log(f"  {family} step {step + 1}/{settings.steps} loss {recent:.3f} "
                f"({time.perf_counter() - started:.0f} s)")
    model.eval()
    return {"train_seconds": round(time.perf_counter() - started, 1), "first_loss": losses[0],
            "last_loss": sum(losses[-10:]) / len(losses[-10:])}


@torch.no_grad()
def accuracy(model, tok, family: str, items: Sequence[Item], batch_size: int = 32) -> Dict[str, float]:
    """Accuracy per task, every token kept (no plugin)."""
    right: Dict[str, List[bool]] = {}
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        for it, ok in zip(chunk, score_batch(model, tok, family, chunk)):
            right.setdefault(it.task, []).append(ok)
    return {t: sum(v) / len(v) for t, v in right.items()}


def train_model(family: str, settings: TrainSettings = TrainSettings(), cache: Optional[os.PathLike] = None,
                log: Optional[Callable[[str], None]] = None):
    """The trained (model, tokenizer, record) of `family`: from the cache when a model with the same family, suite
    version and settings is there, else trained and stored (written to a temporary folder and renamed, so an
    interrupted training never leaves a half model behind)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    path = cache_path(family, settings, cache)
    model, tok = build(family, seed=settings.seed)
    if (path / "model.pt").is_file() and (path / "record.json").is_file():
        model.load_state_dict(torch.load(path / "model.pt", weights_only=True))
        model.eval()
        record = json.loads((path / "record.json").read_text())
        return model, tok, dict(record, cached=True)
    if log:
        log(f"training {family} ({settings.steps} steps of {settings.batch} clips, every token) -> {path}")
    record = train(model, tok, family, settings, log)
    check = make_items(settings.tasks, settings.check_samples, FAMILIES[family].cell, first_seed=EVAL_SEED + 10**5)
    record["held_out_accuracy"] = accuracy(model, tok, family, check)
    record.update(family=family, key=path.name, suite_version=SUITE_VERSION, settings=dataclasses.asdict(settings))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "record.json").write_text(json.dumps(record, indent=2))
        if path.exists():  # a half-written folder from an older layout: replace it
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return model, tok, dict(record, cached=False)


# ---------------------------------------------------------------------------------------------------------------
# the control strategies
# ---------------------------------------------------------------------------------------------------------------


def _controls():
    """The control strategy classes (built lazily: the strategies package is imported only when needed)."""
    from ..engine.budgets import frame_keep_count
    from ..engine.tango import stable_topk, tango_prune
    from ..strategies.base import PruningStrategy
    from ..strategies.builtin import plan_from_frame_columns

    class LeastSalient(PruningStrategy):
        """Per frame the ceil(L r) LEAST salient tokens (sink positions last): what a method that read the saliency
        backwards would keep. Where the saliency finds the evidence, this loses it."""

        feature_gradients = True

        def select(self, tokens, config):
            scores = -tokens.saliency.detach().float()
            if tokens.sink_positions:
                scores[:, list(tokens.sink_positions)] = -float("inf")
            return plan_from_frame_columns(tokens, stable_topk(scores, frame_keep_count(tokens.tokens_per_frame,
                                                                                       config.retention_ratio)))

    class FirstFrames(PruningStrategy):
        """The first T * ceil(L r) tokens in time order: whole frames from the start only (the same count as
        topk). Loses whatever happens later in the clip."""

        feature_gradients = True

        def select(self, tokens, config):
            T, L, D = tokens.features.shape
            n = T * frame_keep_count(L, config.retention_ratio)
            flat = torch.arange(n, device=tokens.features.device)
            return _plan(tokens, flat)

    class TangoMutated(PruningStrategy):
        """Tango on a saliency that carries no information about the tokens (`mode`): what Tango does when it
        ignores the tower's attention. Everything else (segments, diversity, merging) is Tango's."""

        feature_gradients = True
        allows_duplicate_indices = True
        mode = "inverted"

        def select(self, tokens, config):
            s = tokens.saliency.detach()
            if self.mode == "inverted":  # the same values, the order reversed within each frame
                s = s.max(dim=1, keepdim=True).values + s.min(dim=1, keepdim=True).values - s
            else:
                g = torch.Generator().manual_seed(int(tokens.features.shape[0] * 1009 + tokens.features.shape[1]))
                s = torch.rand(s.shape, generator=g).to(device=s.device, dtype=s.dtype) * s.mean()
            return tango_prune(dataclasses.replace(tokens, saliency=s), config)

    class TangoInverted(TangoMutated):
        mode = "inverted"

    class TangoRandom(TangoMutated):
        mode = "random"

    return {"test_least_salient": LeastSalient, "test_first_frames": FirstFrames,
            "test_tango_inverted": TangoInverted, "test_tango_random": TangoRandom}


def _plan(tokens, flat: torch.Tensor):
    from ..engine.types import PrunePlan

    T, L, D = tokens.features.shape
    return PrunePlan(kept_indices=flat, features=tokens.features.reshape(T * L, D)[flat])


#: the control strategies' names (available inside `extra_strategies`)
CONTROLS = ("test_least_salient", "test_first_frames")
MUTANTS = ("test_tango_inverted", "test_tango_random")


@contextlib.contextmanager
def extra_strategies(names: Sequence[str] = CONTROLS + MUTANTS) -> Iterator[List[str]]:
    """Register the control / mutant strategies `names` for the duration of the block, then unregister them
    (also on error). They must not stay registered: the tests and `tango-plugin matrix` run every registered
    strategy."""
    from ..strategies.base import register_strategy, unregister_strategy

    classes = _controls()
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ValueError(f"unknown control strategy {unknown}; known: {sorted(classes)}")
    done = []
    try:
        for n in names:
            register_strategy(n, classes[n])
            done.append(n)
        yield list(done)
    finally:
        for n in reversed(done):
            unregister_strategy(n)


# ---------------------------------------------------------------------------------------------------------------
# evaluation with a strategy
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CellResult:
    """Accuracy and evidence kept per task of one (model, strategy, ratio)."""

    accuracy: Dict[str, float]
    evidence: Dict[str, Optional[float]]
    kept_share: float
    seconds: float


@torch.no_grad()
def evaluate(model, tok, family: str, items: Sequence[Item], strategy: Optional[str], ratio: float,
             batch_size: int = 32) -> CellResult:
    """Score `items` with `strategy` at `ratio` through `tango_plugin.enable` (None: the plugin off).

    Frame times: `fps` = the family's frames per step (one step per second), so ST-RoPE gets each frame's true
    time and no "frame times taken from default" warning fires. Sink positions: none (`sink_positions=()`): the
    presets' positions are for the real checkpoints' grids, and a tiny random tower has no attention sinks.
    """
    import tango_plugin as tango

    fam = FAMILIES[family]
    started = time.perf_counter()
    right: Dict[str, List[bool]] = {}
    found: Dict[str, List[float]] = {}
    kept = total = 0
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        if strategy is None:
            ok = score_batch(model, tok, family, chunk)
        else:
            cfg = tango.TangoConfig(retention_ratio=ratio, strategy=strategy, sink_positions=())
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)  # a frame-time or sink warning would be a bug here
                handle = tango.enable(model, cfg, fps=fam.fps, record_plans=True)
                try:
                    ok = score_batch(model, tok, family, chunk)
                    plans = handle.plans()
                    rows = handle.report()["samples"]
                finally:
                    handle.remove()
            for rec in plans:
                ev = chunk[rec.row].evidence.reshape(-1)
                if ev.any():
                    hit = torch.zeros_like(ev)
                    hit[rec.plan.kept_indices.cpu()] = True
                    found.setdefault(chunk[rec.row].task, []).append(float((hit & ev).sum() / ev.sum()))
            kept += sum(r["visual_tokens_after"] for r in rows)
            total += sum(r["visual_tokens_before"] for r in rows)
        for it, o in zip(chunk, ok):
            right.setdefault(it.task, []).append(o)
    acc = {t: sum(v) / len(v) for t, v in right.items()}
    evidence = {t: (sum(found[t]) / len(found[t]) if t in found else None) for t in acc}
    if strategy is None or ratio >= 1.0:  # every token reaches the LLM
        evidence = {t: 1.0 for t in acc}
    return CellResult(acc, evidence, kept / total if total else 1.0, round(time.perf_counter() - started, 2))


__all__ = ["SUITE_VERSION", "STEPS", "GRID", "SPOT", "NEEDLE_STEPS",
           "FAMILIES", "DEFAULT_FAMILIES", "TASKS", "Task", "Item", "Family",
           "make_item", "make_items", "build", "batch_inputs", "answer_ids", "score_batch", "TrainSettings",
           "cache_key", "cache_path", "default_cache", "train", "train_model", "accuracy", "CONTROLS", "MUTANTS",
           "extra_strategies", "CellResult", "evaluate"]
