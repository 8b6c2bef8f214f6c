"""Glue for upstream frameworks (installed as `tango_plugin.patches`)."""
