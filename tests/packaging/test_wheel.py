"""`pip install .` (not editable) gives importable packages and the console commands (issue #10).

The wheel is built without build isolation and installed with --no-deps into a fresh venv whose
dependencies (torch, ...) are borrowed from the project's venv through a .pth line, so the test
needs no network and no second 5 GB torch install. A .pth *line* adds a path without running that
folder's own .pth files, so the editable install of the checkout is not visible: imports must come
from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    out = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            "-q",
        ],
        cwd=tmp,
    )
    assert out.returncode == 0, out.stderr
    wheels = list(dist.glob("minc-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, found {wheels}"

    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp)
    borrowed = sysconfig.get_paths()["purelib"]
    Path(site.stdout.strip(), "_borrowed_deps.pth").write_text(borrowed + "\n")
    out = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "-q",
            str(wheels[0]),
        ],
        cwd=tmp,
    )
    assert out.returncode == 0, out.stderr
    return env_dir


def test_wheel_installs_importable_packages_with_version(installed_wheel: Path, tmp_path: Path):
    py = installed_wheel / "bin" / "python"
    code = (
        "import sys, reference, scaled, scaled.pretrain, scaled.linear_eval, reference.losses;"
        "print(reference.__file__); print(scaled.__version__ == reference.__version__)"
    )
    out = _run([str(py), "-c", code], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    path, same = out.stdout.split()
    assert Path(path).is_relative_to(installed_wheel), f"imported from {path}, not the wheel"
    assert same == "True"


@pytest.mark.parametrize("command", ["minc-pretrain", "minc-linear-eval", "minc-export"])
def test_console_commands(installed_wheel: Path, tmp_path: Path, command: str):
    out = _run([str(installed_wheel / "bin" / command), "--help"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert any(s in out.stdout for s in ("--checkpoint", "--preset", "checkpoint out"))


@pytest.mark.parametrize("tool", ["bench", "experiments", "plot", "demo", "signature", "gradvar"])
def test_tools_ship_in_the_wheel(installed_wheel: Path, tmp_path: Path, tool: str):
    out = _run(
        [str(installed_wheel / "bin" / "python"), "-m", f"scaled.tools.{tool}", "--help"], tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "--output-dir" in out.stdout or "SUBCOMMAND" in out.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["scaled.tools.bench", "losses", "--quick", "--write-docs"],
        ["scaled.tools.experiments", "docs"],
        ["scaled.tools.demo", "--write-docs"],
    ],
)
def test_installed_tools_refuse_to_write_docs(installed_wheel: Path, tmp_path: Path, argv):
    """An installed package has no docs/ of its own: --write-docs is one error line, exit 2,
    before anything is measured or trained."""
    py = str(installed_wheel / "bin" / "python")
    out = _run([py, "-m", *argv, "--output-dir", str(tmp_path / "out")], tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: --write-docs needs a source checkout (docs/results.md not found); "
        "run from a git clone"
    ]
    assert not (tmp_path / "out").exists()
