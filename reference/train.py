"""Old name of `reference.graph_train` (the twin of `scaled.graph_train`); kept for one change.

Import from `reference.graph_train`. This alias exists only until the last caller
(`scaled/tools/experiments.py`) is updated; then it is deleted.
"""

from reference.graph_train import METHODS, features_to_eigenvectors, fit, sample_pairs

__all__ = ["METHODS", "features_to_eigenvectors", "fit", "sample_pairs"]
