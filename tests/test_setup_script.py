"""scripts/setup's decisions, run for real by bash against a stand-in `.venv/bin/python` that records the
pip commands it is given (installing torch for real takes minutes and gigabytes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with scripts/setup, a pyproject.toml and a .venv whose python only logs its arguments."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup", tmp_path / "scripts" / "setup")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"
    python.write_text('#!/bin/sh\necho "$* | PYTHONWARNINGS=${PYTHONWARNINGS:-}" >> "$PIP_LOG"\n')
    python.chmod(0o755)
    (venv_bin / "activate").write_text(f'PATH="{venv_bin}:$PATH"\n')
    return tmp_path


def setup(project: Path, **env: str) -> list[str]:
    """Source scripts/setup as scripts/test does; return the python commands it ran."""
    log = project / "pip.log"
    log.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIKENESS_TORCH_")}
    done = subprocess.run(
        ["bash", "-c", "source scripts/setup"],
        cwd=project,
        env={**clean, "PIP_LOG": str(log), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines() if log.exists() else []


def stamp(project: Path) -> str:
    return (project / ".venv" / ".likeness-installed").read_text().strip()


def test_first_run_installs_torch_then_the_project_without_the_editable_warning(project):
    calls = setup(project)
    assert [c.split(" | ")[0] for c in calls] == [
        "-m pip install --quiet --upgrade pip",
        "-m pip install --quiet torch==2.13.0",
        "-m pip install --quiet -e .[test]",
    ]
    assert calls[2].endswith("PYTHONWARNINGS=ignore:Editable installation")
    assert stamp(project) == "torch: torch==2.13.0 from the default index"
    assert setup(project) == []  # nothing changed: nothing is installed again


def test_a_changed_torch_index_or_version_replaces_torch_only(project):
    setup(project)
    calls = setup(project, LIKENESS_TORCH_INDEX=CPU_INDEX)
    assert [c.split(" | ")[0] for c in calls] == [
        "-m pip install --quiet --upgrade pip",
        "-m pip uninstall --quiet --yes torch",
        f"-m pip install --quiet --index-url {CPU_INDEX} torch==2.13.0",
    ]
    assert stamp(project) == f"torch: torch==2.13.0 from {CPU_INDEX}"
    assert setup(project, LIKENESS_TORCH_INDEX=CPU_INDEX) == []
    calls = setup(project, LIKENESS_TORCH_INDEX=CPU_INDEX, LIKENESS_TORCH_VERSION="2.12.1")
    assert calls[-1].split(" | ")[0] == f"-m pip install --quiet --index-url {CPU_INDEX} torch==2.12.1"


def test_a_newer_pyproject_reinstalls_the_project_only(project):
    setup(project)
    now = time.time()
    os.utime(project / ".venv" / ".likeness-installed", (now - 100, now - 100))
    os.utime(project / "pyproject.toml", (now - 50, now - 50))  # edited after the last install
    calls = setup(project)
    assert [c.split(" | ")[0] for c in calls] == ["-m pip install --quiet -e .[test]"]
    assert setup(project) == []


def test_a_stamp_from_before_torch_was_recorded_keeps_its_torch(project):
    (project / ".venv" / ".likeness-installed").write_text("")
    assert setup(project) == []
    assert stamp(project) == "torch: torch==2.13.0 from the default index"
