"""What every benchmark shares: the device, wall-clock timing, tables, JSON and the docs section."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scaled.config import UserError
from scaled.tools.provenance import checkout_root, docs_file, provenance_line, replace_section


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; a CUDA request without CUDA is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name} is not a device; use auto, cpu, cuda or cuda:N") from None


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU) so that wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1
) -> list[float]:
    """Wall-clock seconds of `reps` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``out_dir/name.json``, say so, and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running (`argv`, default sys.argv), as a user would type it."""
    return "python -m scaled.tools.bench " + " ".join(sys.argv[1:] if argv is None else argv)


def docs_body(
    title: str, command: str, env: dict[str, Any], table: str, notes: str, figure: str | None
) -> str:
    """The markdown of one benchmark section of docs/results.md."""
    parts = [
        f"### {title}",
        "",
        f"Command: `{command}`  ",
        f"Measured on: {provenance_line(env)}.",
        "",
        table,
        "",
        notes.strip(),
    ]
    if figure:
        parts += ["", f"![{title}]({figure})"]
    return "\n".join(parts) + "\n"


def record_path(root: Path, name: str) -> Path:
    """Where a benchmark's record lives once published: docs/results/bench_<name>.json."""
    return root / "docs" / "results" / f"bench_{name}.json"


def stored_record(root: Path, name: str) -> dict[str, Any]:
    """The published record of benchmark `name` (what its docs section is rendered from)."""
    path = record_path(root, name)
    if not path.is_file():
        raise UserError(f"no {path}; run `python -m scaled.tools.bench {name} --write-docs`")
    return json.loads(path.read_text(encoding="utf-8"))


def ran_on_cuda(record: dict[str, Any]) -> bool:
    """Whether a stored record was measured on CUDA (its `env`'s device)."""
    return str(record["env"].get("device", "cpu")).startswith("cuda")


def publish(name: str, payload: dict[str, Any], render: Callable[[Path], str], docs="results.md"):
    """`--write-docs`: store `payload` as the checkout's record of benchmark `name` and write
    its docs section as `render(root)` makes it from that record (the renderer that
    `python -m scaled.tools.results` calls, so the section regenerates from the record)."""
    root = checkout_root()
    path = record_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    write_docs_section(name, render(root), docs)


def write_docs_section(name: str, body: str, docs: str = "results.md") -> None:
    """Replace section ``bench-<name>`` of the checkout's ``docs/<docs>`` with `body`."""
    replace_section(docs_file(docs), f"bench-{name}", body)


def save_figure(fig, out_dir: Path, name: str, write_docs: bool) -> str | None:
    """Save a matplotlib figure to ``out_dir/<name>.png`` (and to the checkout's docs/bench/ with
    `write_docs`); the docs-relative path when it went to docs/, else None."""
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{name}.png", dpi=110, bbox_inches="tight")
    rel = None
    if write_docs:
        figures = docs_file().parent / "bench"
        figures.mkdir(parents=True, exist_ok=True)
        fig.savefig(figures / f"{name}.png", dpi=110, bbox_inches="tight")
        rel = f"bench/{name}.png"
    plt.close(fig)
    return rel
