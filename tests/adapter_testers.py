"""Tiny tester configs per registered adapter (composed by the adapter test matrix).

Each `Tester` says how to build a tiny model of one adapter and its inputs. A coverage test fails when a registered
adapter has no tester here, so adding an adapter forces adding its tester.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from tango_plugin import testing as tiny


@dataclass(frozen=True)
class Tester:
    model_type: str
    options: Dict = field(default_factory=dict)
    #: frames of the two videos of the batch test (LLaVA-OV stacks videos, so both must have the same length)
    batch_frames: tuple = (8, 6)
    #: the adapter reproduces the stock HF model at retention 1.0 (False for options the HF class cannot express)
    matches_stock: bool = True

    @property
    def tok_style(self) -> str:
        return "llava" if self.model_type == "llava_onevision" else "qwen"

    def tokenizer(self):
        return _tokenizer(self.tok_style)

    def model(self, seed: int = 0):
        return _model(self.model_type, seed)

    def fresh_model(self, seed: int = 0):
        return tiny.build_model(self.model_type, self.tokenizer(), seed=seed)

    def inputs(self, model, media, prompts, **kw):
        return tiny.video_inputs(model, self.tokenizer(), media, prompts, **kw)

    def single(self, model, frames: int = 8, seed: int = 0, prompt: str = "what happens in this video?", **kw):
        return self.inputs(model, [[tiny.VideoSpec(frames, seed=seed)]], [prompt], **kw)


@functools.lru_cache(maxsize=None)
def _tokenizer(style: str):
    return tiny.build_tokenizer(style)


@functools.lru_cache(maxsize=None)
def _model(model_type: str, seed: int):
    return tiny.build_model(model_type, _tokenizer("llava" if model_type == "llava_onevision" else "qwen"), seed=seed)


TESTERS: Dict[str, Tester] = {
    "llava_onevision": Tester("llava_onevision", batch_frames=(8, 8)),
    "llava_onevision[average,grid]": Tester("llava_onevision", {"pool_mode": "average", "newline": "grid"},
                                            batch_frames=(8, 8), matches_stock=False),
    "qwen2_vl": Tester("qwen2_vl"),
    "qwen2_5_vl": Tester("qwen2_5_vl"),
    "qwen3_vl": Tester("qwen3_vl"),
    "qwen3_vl_moe": Tester("qwen3_vl_moe"),
    # videos stack into one (videos, frames, C, H, W) tensor, so both videos of the batch test have 8 frames
    "llava_next_video": Tester("llava_next_video", batch_frames=(8, 8)),
    "glm4v": Tester("glm4v"),
    "internvl": Tester("internvl"),
}
try:  # the example third-party package (examples/third_party_adapter), when pip-installed: its entry point registers
    # tango_example_vl and its testing module registers the tiny recipe, so the matrix covers it too
    import tango_example_adapter.testing  # noqa: F401

    TESTERS["tango_example_vl"] = Tester("tango_example_vl")
except ImportError:
    pass


#: registered adapters whose package cannot be installed next to transformers 5: tested in their own file, which
#: skips with a reason where the package is missing (the coverage test counts them as covered)
TESTED_ELSEWHERE: Dict[str, str] = {
    "llava_qwen": "tests/test_llava_next.py (LLaVA-NeXT's llava package, transformers 4.x)",
}


def hooks_of(model: torch.nn.Module) -> int:
    """Number of forward (pre-)hooks on all submodules (transformers installs its own output-capturing hooks on the
    first call, so compare against a twin that ran the same calls)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def tango_hooks_of(model: torch.nn.Module) -> int:
    """Hooks whose function comes from tango_plugin (must be 0 whenever no call is running)."""
    return sum(1 for m in model.modules() for fn in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
               if getattr(fn, "__module__", "").startswith("tango_plugin"))


def instance_attrs(model) -> set:
    return set(model.__dict__)


def strip(inputs: dict, *names: str) -> dict:
    return {k: v for k, v in inputs.items() if k not in names}


def placeholder_count(model, inputs: dict) -> int:
    return int((inputs["input_ids"] == model.config.video_token_id).sum())


def gen(model, inputs: dict, n: int = 5, **kw):
    return model.generate(**inputs, max_new_tokens=n, do_sample=False, **kw)


def default_strategy() -> str:
    return "tango"


__all__ = ["Tester", "TESTERS", "hooks_of", "tango_hooks_of", "instance_attrs", "strip", "placeholder_count", "gen",
           "default_strategy", "Optional"]


def spy_strategy(monkeypatch) -> list:
    """Record the `VisualTokens` of every strategy call the adapters make, through the supported observer: every
    `tango_plugin.enable` of the test (also the CLI's) gets an `on_plan` callback appending `record.tokens`."""
    from tango_plugin.integration import api

    seen = []
    real = api.enable

    def enable(model, config=None, **kwargs):
        return real(model, config, on_plan=lambda record: seen.append(record.tokens), **kwargs)

    monkeypatch.setattr(api, "enable", enable)
    return seen
