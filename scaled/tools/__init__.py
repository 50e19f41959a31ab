"""Tools around the library: benchmarks, the paper's ablations, plots, the demo, the GPU check.

Each runs as ``python -m scaled.tools.<name>`` and writes under ``--output-dir``; ``--write-docs``
(from a git checkout only) replaces its marked section of docs/results.md.
"""
