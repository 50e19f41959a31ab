"""MINC, exact: NumPy/SciPy reference of every step of the derivation (docs/derivation.md).

This package never imports torch.
"""

# The one version of the project (pyproject reads it; `scaled` re-exports it).
__version__ = "0.1.0"
