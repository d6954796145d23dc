"""The Dockerfiles: lint-clean (hadolint, installed by the dev extra) and built with the README's
set-up command. No Docker engine runs on our machines, so this is what can be checked here."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(exe).exists(), "hadolint is missing: it comes with the `dev` extra (./setup.sh)"
    return exe


def test_the_three_images_exist():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.serve", "Dockerfile.xpu"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(path):
    proc = subprocess.run([_hadolint(), "--no-color", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_installs_with_the_readme_setup(path):
    text = path.read_text()
    readme = (REPO / "README.md").read_text()
    assert "./setup.sh && .venv/bin/sqft run" in readme  # the README's set-up command
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == "./setup.sh --with-browser && .venv/bin/ruff check . && .venv/bin/python -m pytest"
    assert ci in readme
    assert re.search(r"^RUN (PYTHON=\S+ )?\./setup\.sh", text, re.M), "must install with ./setup.sh"
    assert re.search(r"^USER sqft$", text, re.M), "must not run as root"


def test_entrypoints():
    cpu, serve, xpu = (p.read_text() for p in DOCKERFILES)
    for text in (cpu, xpu):
        assert 'ENTRYPOINT ["/opt/sqft/.venv/bin/sqft"]' in text
    assert "whl/xpu" in xpu and "whl/cpu" in cpu
    assert '"-m", "deploy.server"' in serve and "--api-key-env" in serve  # 0.0.0.0 needs the key
