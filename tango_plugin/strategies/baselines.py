"""The baseline strategies from the literature, registered on import (docs/strategies.md).

One module per method: `random_strategy` ("random"), `visionzip`, `divprune`, `fastvid`, `holitom`, `vidcom2`;
"topk" and "uniform" live in `builtin` next to Tango.
"""

from __future__ import annotations

from .divprune import DivPruneOptions, DivPruneStrategy
from .fastvid import FastVIDOptions, FastVIDStrategy
from .holitom import HoliTomOptions, HoliTomStrategy
from .random_strategy import RandomOptions, RandomStrategy
from .vidcom2 import VidCom2Options, VidCom2Strategy
from .visionzip import VisionZipOptions, VisionZipStrategy

__all__ = ["RandomStrategy", "RandomOptions", "VisionZipStrategy", "VisionZipOptions", "DivPruneStrategy",
           "DivPruneOptions", "FastVIDStrategy", "FastVIDOptions", "HoliTomStrategy", "HoliTomOptions",
           "VidCom2Strategy", "VidCom2Options"]
