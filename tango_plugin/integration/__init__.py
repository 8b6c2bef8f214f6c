"""Integration core: enable/disable, the hook registry, the splice pipeline, the intra-LLM stage."""
