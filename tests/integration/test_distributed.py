"""Data-parallel fine-tuning: 2 ranks on CPU with gloo (torchrun) give the adapters of 1 rank with
the same global batch. Tolerance 1e-5: the same arithmetic, summed in a different order."""

import shutil
import sys

import torch
from safetensors.torch import load_file

from sqft_intel import load_stage
from tests.conftest import run_cli

TOL = 1e-5


def test_two_gloo_ranks_match_one_rank(tmp_path, tiny_recipe):
    import subprocess

    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--recipe", str(tiny_recipe), "--no-progress", "--threads", "1",
              "--set", "finetune.steps=5", "--set", "finetune.batch_size=8"]
    assert run_cli("sparsify", *common, "--out", str(one)).returncode == 0
    shutil.copytree(one, two)
    proc = run_cli("finetune", *common, "--out", str(one))
    assert proc.returncode == 0, proc.stderr[-2000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "sqft_intel.cli", "finetune", *common, "--out", str(two)]
    proc = subprocess.run(launch, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    a = load_file(one / "finetune" / "adapters.safetensors")
    b = load_file(two / "finetune" / "adapters.safetensors")
    assert a.keys() == b.keys()
    moved = 0.0
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=TOL, rtol=0)
        if "lora_B" in k:
            moved += float(a[k].abs().sum())
    assert moved > 0  # the adapters did train
    log1 = load_stage(one / "finetune").raw
    log2 = load_stage(two / "finetune").raw
    assert (log1["metrics"]["world_size"], log2["metrics"]["world_size"]) == (1, 2)
    assert log1["metrics"]["rank_counts"] == log2["metrics"]["rank_counts"]  # same NLS draws
    assert abs(log1["metrics"]["final_loss"] - log2["metrics"]["final_loss"]) < 1e-4


def test_run_under_a_launcher_is_refused(tmp_path, tiny_recipe):
    proc = run_cli("run", "--recipe", str(tiny_recipe), "--out", str(tmp_path / "o"),
                   env={"WORLD_SIZE": "2"})
    assert proc.returncode == 2 and "launch only `sqft finetune`" in proc.stderr
    assert not (tmp_path / "o").exists()
