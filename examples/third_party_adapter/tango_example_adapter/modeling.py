"""A model family with its own `config.model_type`: Qwen2-VL under the name `tango_example_vl` (as a fine-tuned
checkpoint with a renamed model type would ship). Imports transformers."""

from __future__ import annotations

from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from . import MODEL_TYPE


class ExampleVLConfig(Qwen2VLConfig):
    model_type = MODEL_TYPE


class ExampleVLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    config_class = ExampleVLConfig


__all__ = ["ExampleVLConfig", "ExampleVLForConditionalGeneration"]
