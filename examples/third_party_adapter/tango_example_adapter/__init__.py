"""Example third-party adapter package for tango_plugin (see README.md). Importing it imports no transformers."""

MODEL_TYPE = "tango_example_vl"

__all__ = ["MODEL_TYPE"]
