"""MINC at scale: PyTorch twins of `reference.losses`, DDP training and linear evaluation."""

__version__ = "0.1.0"
