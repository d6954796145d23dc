"""A fine-tuning run SIGKILLed after a checkpoint resumes to the adapters of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from tests.conftest import run_cli


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_recipe):
    # 200 steps: the run cannot finish between the first checkpoint and the kill
    common = ["--recipe", str(tiny_recipe), "--no-progress", "--set", "finetune.steps=200",
              "--set", "finetune.checkpoint_every=3"]
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    assert run_cli("sparsify", *common, "--out", str(ref)).returncode == 0
    assert run_cli("finetune", *common, "--out", str(ref)).returncode == 0
    assert run_cli("sparsify", *common, "--out", str(crashed)).returncode == 0

    ckpts = crashed / ".finetune-work" / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "sqft_intel.cli", "finetune", *common,
                             "--out", str(crashed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpts.glob("step-*/trainer_state.json")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
    assert list(ckpts.glob("step-*/trainer_state.json")), "no checkpoint was written"
    assert not (crashed / "finetune").exists()  # the stage is only there once complete

    resumed = run_cli("finetune", *common, "--out", str(crashed))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming fine-tuning" in resumed.stdout
    a = load_file(ref / "finetune" / "adapters.safetensors")
    b = load_file(crashed / "finetune" / "adapters.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0)  # bit-identical: same math, same order
