"""Where a measured number comes from, and where in the docs it goes: shared by every tool.

- :func:`environment` records the machine and the code (git SHA, CPU, GPUs, torch / numpy
  versions, threads) with every result, from the same functions that the trainer's run_info.json
  uses (:mod:`scaled.runlog`); :func:`provenance_line` is its one-line form under each table.
- :func:`replace_section` rewrites one marked section of a markdown file, between
  ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` (the one marker style of docs/results.md).
- :func:`checkout_root` is the git checkout the package runs from: the tools ship in the wheel, and
  an installed package has no docs/ to write into, so ``--write-docs`` works from a clone only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from scaled.config import UserError
from scaled.runlog import device_names, git_state, package_versions

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder that holds scaled/


def checkout_root() -> Path:
    """The source checkout holding this package: ``docs/results.md`` beside it and a ``.git``.

    Raises
    ------
    UserError
        The package is installed (no docs/results.md next to it) or not in a git clone.
    """
    root = PACKAGE_PARENT
    if (root / "docs" / "results.md").is_file() and (root / ".git").exists():
        return root
    raise UserError(
        "--write-docs needs a source checkout (docs/results.md not found); run from a git clone"
    )


def docs_file(name: str = "results.md") -> Path:
    """``docs/<name>`` of the checkout (UserError outside one, see :func:`checkout_root`)."""
    return checkout_root() / "docs" / name


def markers(name: str) -> tuple[str, str]:
    """The markers around section `name`: ``<!-- name:begin -->`` and ``<!-- name:end -->``."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(path: Path, name: str, body: str) -> None:
    """Replace the text between the markers of section `name` in `path` with `body`.

    A file without the section gets it appended at its end, so a new table is never lost; a file
    where the markers are not one begin followed by one end is left alone (UserError).
    """
    begin, end = markers(name)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{begin}\n{body.strip()}\n{end}"
    n_begin, n_end = text.count(begin), text.count(end)
    if n_begin == n_end == 0:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    elif n_begin == n_end == 1 and text.index(begin) < text.index(end):
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        raise UserError(
            f"{path} has {n_begin} {begin} and {n_end} {end} markers; keep exactly one of each, "
            "begin before end, around the section"
        )
    path.write_text(text, encoding="utf-8")


def environment(device: Any = "cpu") -> dict[str, Any]:
    """Code, versions and hardware of a measurement on `device` (a torch.device or its name).

    The keys ``git``, ``versions`` and ``devices`` are those of the trainer's run_info.json
    (:func:`scaled.runlog.git_state`, :func:`~scaled.runlog.package_versions`,
    :func:`~scaled.runlog.device_names`); ``device_name`` is the GPU's name on a CUDA device, else
    the CPU's; ``torch_threads``, ``load_average_1min`` and ``time_utc`` describe this moment:
    call it before the measurement, and :func:`finished` after it.
    """
    import torch

    device = torch.device(device)
    devices = device_names()
    gpus = devices.get("cuda")
    name = devices["cpu"]
    if device.type == "cuda" and isinstance(gpus, list) and gpus:
        name = gpus[device.index or 0]
    return {
        "device": str(device),
        "device_name": name,
        "git": git_state(),
        "versions": package_versions(),
        "devices": devices,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": load_average(),
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def load_average() -> float | None:
    """The 1-minute load average now (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def finished(env: dict[str, Any]) -> dict[str, Any]:
    """`env` (taken by :func:`environment` before a measurement) with the load average and
    time read now, after it: ``load_average_end_1min`` and ``time_end_utc``."""
    return {
        **env,
        "load_average_end_1min": load_average(),
        "time_end_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def load_text(env: dict[str, Any]) -> str | None:
    """ "1-min load average at start X, at end Y" of a record from :func:`finished`; records with
    one reading only (written before the end was read: some tools read it after the run) say
    "1-min load average X (one reading, when the record was written)"."""
    start, end = env.get("load_average_1min"), env.get("load_average_end_1min")
    if start is None:
        return None
    if end is None:
        return f"1-min load average {start:.1f} (one reading, when the record was written)"
    return f"1-min load average at start {start:.1f}, at end {end:.1f}"


def provenance_line(env: dict[str, Any]) -> str:
    """One line saying where and with what a table was measured, from :func:`environment`.

    Parts missing from `env` (older result files hold only ``git``, ``versions`` and
    ``devices``) are left out of the line.
    """
    devices, versions = env.get("devices", {}), env.get("versions", {})
    device = env.get("device", "cpu")
    parts = [f"{env.get('device_name', devices.get('cpu', 'unknown CPU'))} ({device})"]
    gpus = devices.get("cuda")
    if not device.startswith("cuda") and isinstance(gpus, list) and gpus:
        parts.append("unused GPU(s) " + ", ".join(gpus))
    parts += [f"{pkg} {versions[pkg]}" for pkg in ("torch", "numpy") if pkg in versions]
    if env.get("torch_threads") is not None:
        parts.append(f"{env['torch_threads']} threads")
    if devices.get("cpu_count") is not None:
        parts.append(f"{devices['cpu_count']} CPU cores")
    if load_text(env) is not None:
        parts.append(load_text(env))
    parts.append(f"git {str(env.get('git', {}).get('sha', 'unknown'))[:10]}")
    if env.get("time_utc"):
        parts.append(f"{env['time_utc']} UTC")
    return ", ".join(parts)


def add_output_options(parser, name: str) -> None:
    """`--output-dir`, `--write-docs` and `--publish DIR` of an analysis tool writing NAME.json."""
    parser.add_argument("--output-dir", type=Path, default=Path(f"runs/{name}"))
    parser.add_argument(
        "--write-docs", action="store_true", help="into docs/results/ and docs/results.md"
    )
    parser.add_argument(
        "--publish",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"no run: put DIR/{name}.json (an earlier run's) into the docs",
    )


def run_or_publish(args, name: str, command, publish, table) -> int:
    """The main of an analysis tool: `command(args)` then `publish` with `--write-docs`, or
    `--publish DIR` alone; prints `table(result)`; one-line errors, exit 2."""
    import json
    import sys

    if args.publish is not None:
        try:
            result = json.loads((args.publish / f"{name}.json").read_text())
            publish(result, args.publish)
        except (UserError, OSError) as err:
            print(f"error: {err}; pass the --output-dir of a finished run", file=sys.stderr)
            return 2
        print(table(result))
        return 0
    try:
        result = command(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(result))
    if args.write_docs:
        publish(result, args.output_dir)
    return 0


def publish_results(name: str, heading: str, result: dict, out: Path, *, tag, plot, table):
    """Copy ``out/NAME.json`` into docs/results/ as ``NAME_<tag>.json``, draw its figure there
    and rewrite the NAME section of docs/results.md from every ``NAME_*.json`` there (the tables
    are generated from the JSON, never typed in). `tag(result)` names a result's budget."""
    import shutil

    results = checkout_root() / "docs" / "results"
    shutil.copyfile(out / f"{name}.json", results / f"{name}_{tag(result)}.json")
    plot(result, results / f"{name}_{tag(result)}.png")  # re-drawn from the JSON
    replace_section(docs_file(), name, results_section(name, heading, results, tag, table))


def results_section(name: str, heading: str, results: Path, tag, table) -> str:
    """The NAME section of docs/results.md from every ``results/NAME_*.json``: per record its
    command, minutes, provenance, ``table(record)`` and figure (what `publish_results` writes
    and ``python -m scaled.tools.results`` regenerates)."""
    import json

    parts = [heading, ""]
    for path in sorted(results.glob(f"{name}_*.json")):
        r = json.loads(path.read_text())
        parts += [
            f"Command: `{r['command']}` ({tag(r)}; {r['elapsed_seconds'] / 60:.1f} min)  ",
            f"Measured on: {provenance_line(r)}.",
            "",
            table(r),
            "",
            f"![{name} {tag(r)}](results/{path.stem}.png)",
            "",
        ]
    return "\n".join(parts)
