"""`sqft report`: the HTML page and its PNGs from a run, rendered in headless Chromium.

The rendering test needs Chromium (`./setup.sh --with-browser` installs Debian's on CI); without
it the test fails and says so rather than skipping.
"""

import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import copy_run, run_cli

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium() -> str:
    exe = os.environ.get("SQFT_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if not exe:
        pytest.fail("headless Chromium is needed to render the report: run `./setup.sh --with-browser` "
                    "(Debian: apt-get install chromium) or set SQFT_CHROMIUM to its path.")
    return exe


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory, tiny_model_dir, tiny_task, tiny_fp_run):
    """A tiny FP run with an evolutionary search, so every section of the report has data: `sqft
    run` on a copy of the session's FP run reuses its sparsify and finetune stages (its held-out
    split is 6 items: a tenth of the 64 train rows), then searches, merges and evaluates."""
    from tests.conftest import write_tiny_recipe

    tmp = tmp_path_factory.mktemp("report")
    recipe = write_tiny_recipe(tmp, tiny_model_dir, *tiny_task)
    out = copy_run(tiny_fp_run[0], tmp / "run", stages=("sparsify", "finetune"))
    proc = run_cli("run", "--recipe", str(recipe), "--out", str(out), "--no-progress",
                   "--set", "select.strategy=evolution", "--set", "select.budget=8",
                   "--set", "select.population=4")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("up to date") == 2  # sparsify and finetune: the session's
    assert "report in" in proc.stdout
    return out


def test_run_writes_a_self_contained_report(searched_run):
    page = (searched_run / "report" / "index.html").read_text()
    for png in ("accuracy", "sparsity", "loss", "ranks", "pareto"):
        assert (searched_run / "report" / f"{png}.png").stat().st_size > 5000, png
    assert page.count("data:image/png;base64,") == 5 and "src=\"http" not in page
    for heading in ("Accuracy", "Sparsity per layer", "Fine-tuning", "NLS rank sampling",
                    "Sub-adapter selection"):
        assert f"<h2>{heading}" in page, heading
    assert "0 new nonzeros" in page and "held-out train items" in page


def test_report_renders_in_headless_chromium(searched_run, tmp_path):
    import numpy as np
    from PIL import Image

    page = searched_run / "report" / "index.html"
    common = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    loaded = re.search(r'data-images-loaded="(\d+)" data-images-total="(\d+)"', dom.stdout)
    assert loaded, dom.stdout[:500] + dom.stderr[-1500:]
    assert loaded.group(1) == loaded.group(2) == "5"  # every embedded plot decoded
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert rgb.shape == (2400, 1200, 3)
    # look at it: not blank, dark text on white at the top, and the plots' colours in the page
    grey = rgb.mean(-1)
    assert 0.005 < (grey < 100).mean() < 0.5
    assert grey[:120].min() < 60 and grey[:120].max() > 240
    colourful = (rgb.max(-1) - rgb.min(-1) > 80).mean()  # matplotlib's blue/orange/green
    assert colourful > 0.01, colourful


def test_report_of_an_empty_directory_is_a_clear_error(tmp_path):
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 2 and "holds no sqft stage output" in proc.stderr


def test_report_of_a_half_finished_run_shows_what_exists(tmp_path, tiny_fp_run):
    out = copy_run(tiny_fp_run[0], tmp_path / "run", stages=("sparsify",))
    proc = run_cli("report", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (out / "report" / "index.html").read_text()
    assert "<h2>Sparsity per layer" in page and "No merge stage yet." in page
    assert "<h2>Accuracy" not in page and page.count("data:image/png") == 1
