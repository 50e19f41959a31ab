"""MINC, exact: NumPy/SciPy reference of every step of the derivation (docs/derivation.md).

This package never imports torch.
"""

__version__ = "0.1.0"
