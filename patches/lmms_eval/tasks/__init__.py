"""Empty on purpose: lmms-eval's deprecated `LMMS_EVAL_PLUGINS=tango_plugin.patches.lmms_eval` route adds this
folder to the task search path and fails without it. The plugin ships models only."""
