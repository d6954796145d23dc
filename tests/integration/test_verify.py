"""`verify_export` ties every IR weight to the merge stage's own weights.

Regression: verify used to copy the IR's weights into the torch reference before the logit check
(for an FP16 export: all of them) and had no other check on them, so an IR holding other weights
than the merge's (the unmerged base, a changed value) passed. The logit row still passes on such
an IR, which is why these tests also assert it: only the weights row can see the difference.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sqft_intel.artifacts import write_stage_json
from tests.conftest import run_cli, write_tiny_recipe

pytest.importorskip("openvino")  # the `openvino` extra: installed by the README's set-up

WEIGHTS_ROW = "weights equal the merge's"


@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory, tiny_model_dir, tiny_task):
    """FP SparsePEFT on the tiny model through the CLI, ending with an FP16 export + verify."""
    tmp = tmp_path_factory.mktemp("tiny-fp16")
    recipe = write_tiny_recipe(tmp, tiny_model_dir, *tiny_task)
    out = tmp / "run"
    proc = run_cli("run", "--recipe", str(recipe), "--out", str(out), "--no-progress",
                   "--set", "export.enabled=true", "--set", "eval.items=4")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _row(report, check: str) -> tuple[str, str, str]:
    return next(r for r in report.rows if r[0] == check)


def _tampered_merge(merge_dir, dest, change) -> None:
    """Copy a merge stage, let `change(tensors)` edit model.safetensors in place, and record the
    new file's sha256 in stage.json, so the copy passes `load_stage` like a genuine merge."""
    shutil.copytree(merge_dir, dest)
    path = dest / "model.safetensors"
    with safe_open(path, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    save_file(tensors, path, metadata=meta)
    raw = json.loads((dest / "stage.json").read_text())
    extra = {k: v for k, v in raw.items()
             if k not in ("stage", "sqft_intel_version", "parent", "config", "metrics", "sha256")}
    write_stage_json(dest, stage=raw["stage"], config=raw["config"], parent=raw["parent"],
                     metrics=raw["metrics"], **extra)


def test_fp16_export_weights_are_the_merge_weights_rounded_to_fp16(fp16_run):
    out, stdout = fp16_run
    report = json.loads((out / "openvino" / "verify.json").read_text())
    assert report["ok"] and report["format"] == "fp16"
    # 7 projections x 2 layers, lm_head and the embeddings, each against merge/model.safetensors
    assert report["weights_checked"] == 16 and not report["weights_mismatch"]
    assert not report["weights_skipped"]
    line = next(x for x in stdout.splitlines() if x.startswith(WEIGHTS_ROW))
    assert line[len(WEIGHTS_ROW):].split()[0] == "ok" and "16 f16 bit-identical" in line, line


def test_verify_fails_an_fp16_export_of_other_weights(fp16_run, tmp_path):
    """Export from a merge with two changed weights, verify against the original merge: FAIL on the
    weights row only. One kept weight of a masked layer moves by one fp16 ulp (bit-exactness), and
    lm_head, which no mask or INT4 row covers, changes by 0.5."""
    from sqft_intel.export.api import export_
    from sqft_intel.export.config import ExportConfig
    from sqft_intel.export.verify import verify_export

    out, _ = fp16_run
    with safe_open(out / "merge" / "masks.safetensors", framework="pt") as f:
        masks = {k: f.get_tensor(k) for k in f.keys()}
    up = "model.layers.0.mlp.up_proj.weight"
    row, col = (int(i) for i in torch.nonzero(masks[up])[0])  # a kept (nonzero) weight

    def change(t):
        w16 = np.array([t[up][row, col].item()], dtype=np.float16)
        t[up][row, col] = float((w16.view(np.uint16) + 1).view(np.float16)[0])  # next fp16 value
        t["lm_head.weight"][3, 5] += 0.5

    _tampered_merge(out / "merge", tmp_path / "bad" / "merge", change)
    export_(tmp_path / "bad" / "merge", tmp_path / "bad" / "openvino", ExportConfig(format="fp16"))
    report = verify_export(tmp_path / "bad" / "openvino", out / "merge")
    assert not report.ok
    assert sorted(report.weights_mismatch) == ["lm_head", "model.layers.0.mlp.up_proj"]
    assert "1/8192 values" in report.weights_mismatch["model.layers.0.mlp.up_proj"]
    assert _row(report, WEIGHTS_ROW)[1] == "MISMATCH"
    assert "verify: FAIL" in report.table()
    # what verify checked before: all of these pass on the wrong weights
    assert report.new_nonzeros == 0 and not report.missing
    assert report.max_abs_logit_diff <= report.logit_tol and report.greedy_match


def test_int4_export_int8_layers_are_checked_within_one_step(tiny_int4_run, tmp_path):
    """embeddings/lm_head of an INT4 export are NNCF INT8 (other_layers=int8): within one step σ of
    the merge's weight; a merge whose lm_head differs by two steps in one value fails."""
    from sqft_intel.export.ir_weights import read_ir_weights
    from sqft_intel.export.verify import verify_export

    out, stdout = tiny_int4_run
    report = json.loads((out / "openvino" / "verify.json").read_text())
    assert report["ok"] and report["weights_checked"] == 2 and not report["weights_mismatch"]
    line = next(x for x in stdout.splitlines() if x.startswith(WEIGHTS_ROW))
    assert "2 u8 within one quantization step" in line and "14 INT4" in line, line

    lm_head = read_ir_weights(out / "openvino" / "openvino_model.xml")["lm_head"]
    assert lm_head.kind == "u8"
    step = float(lm_head.scales[3, 0])  # per output channel

    def change(t):
        t["lm_head.weight"][3, 5] += 2 * step

    _tampered_merge(out / "merge", tmp_path / "merge", change)
    bad = verify_export(out / "openvino", tmp_path / "merge")
    assert not bad.ok and list(bad.weights_mismatch) == ["lm_head"]
    assert "1/" in bad.weights_mismatch["lm_head"] and not bad.int4_mismatch
    assert bad.max_abs_logit_diff <= bad.logit_tol and bad.greedy_match
