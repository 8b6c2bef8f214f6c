"""Test material for tango_plugin and for users' own adapters: no downloads, CPU only.

* `ar1_video`: AR(1) token trajectories (near-duplicate static tokens, moving ones, a few cuts; issue 24's input).
* `synthetic_video`: generated visual tokens (features, saliency, grid, times) with scenes, static background and
  a moving salient object, for the engine and the strategies (torch only).
* `build_tokenizer`, `build_model`, `video_inputs`, `VideoSpec`, `ImageSpec`: tiny random Video LLMs of every
  built-in family, a byte-level BPE tokenizer trained on the fly and inputs laid out exactly as the Hugging Face
  processors lay them out (needs transformers).

The model half is imported on first use, so `import tango_plugin.testing` needs torch only.

Example:
    ```python
    >>> from tango_plugin import testing
    >>> tok = testing.build_tokenizer("qwen")
    >>> model = testing.build_model("qwen2_vl", tok)
    >>> inputs = testing.video_inputs(model, tok, [testing.VideoSpec(frames=8)], prompts=["what happens?"])
    ```
"""

from __future__ import annotations

import importlib

from . import tiny_glm4v  # noqa: F401  (registers the tiny GLM-4.1V recipe; torch only at import)
from .synthetic import SyntheticVideo, ar1_video, synthetic_video
from .tiny_internvl import MODEL_TYPE as _INTERNVL  # noqa: F401  (registers the tiny InternVL3 recipe; torch only)

_MODEL_HALF = ("build_tokenizer", "build_model", "build_sized_model", "video_inputs", "VideoSpec", "ImageSpec",
               "video_token_count", "media_token_counts", "synthetic_frames", "qwen_patches", "MODEL_TYPES",
               "SPECIALS")


def __getattr__(name):
    if name in _MODEL_HALF:
        return getattr(importlib.import_module(".tiny_models", __name__), name)
    raise AttributeError(f"module 'tango_plugin.testing' has no attribute {name!r}")


__all__ = ["SyntheticVideo", "synthetic_video", "ar1_video", *_MODEL_HALF]
