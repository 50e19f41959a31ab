"""MINC at scale: PyTorch twins of `reference.losses`, DDP training and linear evaluation."""

from reference import __version__

__all__ = ["__version__"]
