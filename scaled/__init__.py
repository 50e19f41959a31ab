"""MINC at scale: PyTorch twins of `reference.losses`, DDP training and linear evaluation.

The objectives are importable from here for use in your own loop (`scaled/objective.py`)::

    from scaled import MINCLoss
"""

from reference import __version__
from scaled.objective import (
    AlphaLoss,
    BYOLLoss,
    MINCLoss,
    SimCLRLoss,
    SimSiamLoss,
    SpectralLoss,
    build_objective,
)

__all__ = [
    "AlphaLoss",
    "BYOLLoss",
    "MINCLoss",
    "SimCLRLoss",
    "SimSiamLoss",
    "SpectralLoss",
    "__version__",
    "build_objective",
]
