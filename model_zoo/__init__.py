"""Model adapters, one per model family (installed as `tango_plugin.model_zoo`)."""
