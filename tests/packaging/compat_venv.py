"""Build a venv with another torch / torchvision pair for `make test-compat` (issue 29).

    python tests/packaging/compat_venv.py VENV TORCH TORCHVISION

PyPI's x86_64 torch wheels are CUDA builds: torch and torchvision come with their NVIDIA
requirements (about 3 GB, ~5 GB per venv; ``import torch`` needs libcudnn and friends even on the
CPU: a ``--no-deps`` install fails with "libcudnn.so.9: cannot open shared object file", tried).
The project's own dependencies come from pyproject.toml without its torch / torchvision pins,
plus the dev extra and the build requirements, and the checkout is installed editable with
``--no-deps``. The machine's pip constraint file (which caps torch) is bypassed with
``PIP_CONFIG_FILE=/dev/null``: these venvs ask for releases outside it on purpose.
A venv whose stamp file names the same pair and this script's hash is reused
(``VENV/.compat-installed``).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PINNED_HERE = {"torch", "torchvision"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower()


def project_requirements() -> list[str]:
    """pyproject's dependencies without torch / torchvision, its dev extra, its build needs."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    deps = [d for d in project["dependencies"] if _name(d) not in PINNED_HERE]
    return deps + project["optional-dependencies"]["dev"] + pyproject["build-system"]["requires"]


def pip(py: Path, *args: str) -> None:
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PIP_CONSTRAINT", None)
    subprocess.run([str(py), "-m", "pip", *args], check=True, env=env, cwd=ROOT)


def build(env_dir: Path, torch_version: str, torchvision_version: str) -> Path:
    """Create (or reuse) `env_dir` with the pair; returns its Python."""
    py = env_dir / "bin" / "python"
    stamp = env_dir / ".compat-installed"
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]  # this script
    want = f"torch=={torch_version} torchvision=={torchvision_version} recipe {recipe}\n"
    if stamp.is_file() and stamp.read_text() == want and py.exists():
        print(f"{env_dir}: {want.strip()} (reused)", flush=True)
        return py
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    pip(py, "install", "-q", "--upgrade", "pip", "packaging")
    pins = [f"torch=={torch_version}", f"torchvision=={torchvision_version}"]
    pip(py, "install", "-q", *pins, *project_requirements())
    pip(py, "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(ROOT))
    stamp.write_text(want)
    print(f"{env_dir}: {want.strip()} (installed)", flush=True)
    return py


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("error: usage: compat_venv.py VENV TORCH TORCHVISION; e.g. .venv-compat-lowest "
              "2.11.0 0.26.0", file=sys.stderr)  # fmt: skip
        return 2
    build(Path(args[0]), args[1], args[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
