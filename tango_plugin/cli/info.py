"""`tango-plugin info`: registered strategies, adapters, presets and the config fields."""

from __future__ import annotations

from ..config import TangoConfig
from ..integration.adapter import list_adapters
from ..presets import list_presets
from ..strategies import list_strategies


def cmd_info(args) -> int:
    print("strategies:", ", ".join(list_strategies()))
    print("adapters (config.model_type):", ", ".join(list_adapters()))
    print("presets:", ", ".join(list_presets()))
    print("config fields:")
    for name, text in TangoConfig.help().items():
        print(f"  {name}: {text}")
    return 0
