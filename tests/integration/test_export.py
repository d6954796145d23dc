"""OpenVINO export of merged tiny models: exact INT4 / FP16 IR, `sqft verify`, GenAI generation."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sqft_intel import ConfigError, load_stage
from sqft_intel.artifacts import sha256_file
from tests.conftest import run_cli

pytest.importorskip("openvino")  # the `openvino` extra: installed by the README's set-up

@pytest.fixture(scope="module")
def int4_run(tiny_int4_run):
    return tiny_int4_run


def test_run_ends_with_a_verified_exact_int4_export(int4_run):
    out, stdout = int4_run
    export = out / "openvino"
    for f in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml",
              "openvino_detokenizer.xml", "config.json", "masks.safetensors", "stage.json",
              "verify.json"):
        assert (export / f).is_file(), f
    rec = load_stage(export, expect="export")
    assert rec.parent == "merge" and rec.config["format"] == "int4"
    report = json.loads((export / "verify.json").read_text())
    n = len(load_file(out / "merge" / "masks.safetensors"))
    assert report["ok"] and report["int4_checked"] == n == 14 and report["new_nonzeros"] == 0
    assert report["max_abs_logit_diff"] <= 2e-3 and report["greedy_match"]
    assert "verify: PASS" in stdout and "generate (OpenVINO GenAI" in stdout


def test_ir_holds_the_merge_integers_bit_for_bit(int4_run):
    """Independent of `verify`: the IR's u4 constants, read with OpenVINO, are the merge's."""
    from sqft_intel.export.ir_weights import read_ir_weights
    from sqft_intel.quantization.storage import read_int4

    out, _ = int4_run
    ir = read_ir_weights(out / "openvino" / "openvino_model.xml")
    merged = read_int4(out / "merge")
    base = read_int4(out / "quantize")
    assert any(not torch.equal(merged[f][0], base[f][0]) for f in merged)  # training moved integers
    for fqn, (q, s, z) in merged.items():
        w = ir[fqn]
        assert w.kind == "u4" and np.array_equal(w.q, q.numpy()), fqn
        assert np.array_equal(w.scales.view(np.uint16), s.numpy().view(np.uint16)), fqn
        assert np.array_equal(w.zeros, z.numpy()), fqn
    assert ir["lm_head"].kind == "u8"  # other_layers: int8 by default


def test_verify_fails_on_a_tampered_merge(int4_run, tmp_path):
    """Change one merged integer (and, separately, one mask bit): verify exits 1 naming the check."""
    import shutil

    out, _ = int4_run
    for what in ("int4", "mask"):
        run = tmp_path / what
        shutil.copytree(out / "merge", run / "merge")
        shutil.copytree(out / "openvino", run / "openvino")
        if what == "int4":
            t = load_file(run / "merge" / "int4.safetensors")
            key = next(k for k in t if k.endswith("qweight"))
            t[key][0, 0] ^= 0x01
            save_file(t, run / "merge" / "int4.safetensors")
        else:
            m = load_file(run / "merge" / "masks.safetensors")
            key = next(iter(m))
            m[key][0] = False  # claims the whole first row pruned: the IR has nonzeros there
            save_file(m, run / "merge" / "masks.safetensors")
        tampered = run_cli("verify", str(run))  # the merge stage's own checksum catches it first
        assert tampered.returncode == 2 and "sha256 differs" in tampered.stderr
        rec = json.loads((run / "merge" / "stage.json").read_text())  # a merge that says so
        rec["sha256"] = {f: sha256_file(run / "merge" / f) for f in rec["sha256"]}
        (run / "merge" / "stage.json").write_text(json.dumps(rec))
        proc = run_cli("verify", str(run))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = "INT4 integers/scales/zeros exact  MISMATCH" if what == "int4" else \
            "sparsity kept (no new nonzero)    MISMATCH"
        assert line in proc.stdout and "verify: FAIL" in proc.stdout


def test_openvino_genai_and_optimum_load_the_export(int4_run):
    import openvino_genai as ov_genai
    from optimum.intel import OVModelForCausalLM

    from sqft_intel.export.api import generate

    out, _ = int4_run
    pieces = []
    text = generate(out / "openvino", "Question: the sun", max_new_tokens=6, stream=pieces.append)
    # greedy, and the tiny model emits no end token in its first 6 tokens: the text is not empty,
    # so the equality below says something (an empty text with no pieces passed it too)
    assert isinstance(text, str) and text and pieces
    assert "".join(pieces) == text
    pipe = ov_genai.LLMPipeline(str(out / "openvino"), "CPU")  # GenAI's own defaults, greedy
    cfg = pipe.get_generation_config()
    cfg.max_new_tokens, cfg.do_sample, cfg.apply_chat_template = 6, False, False  # as generate()
    assert str(pipe.generate("Question: the sun", cfg)) == text
    ov_model = OVModelForCausalLM.from_pretrained(str(out / "openvino"))
    assert ov_model.stateful  # KV cache inside the graph, as optimum's text-generation-with-past


def test_fp16_export_of_a_sparsepeft_merge(tmp_path, tiny_recipe):
    out = tmp_path / "run"
    proc = run_cli("run", "--recipe", str(tiny_recipe), "--out", str(out), "--no-progress",
                   "--set", "export.enabled=true", "--set", "eval.items=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_stage(out / "openvino", expect="export").config["format"] == "fp16"
    report = json.loads((out / "openvino" / "verify.json").read_text())
    assert report["ok"] and report["new_nonzeros"] == 0 and report["int4_checked"] == 0
    from sqft_intel.export.ir_weights import read_ir_weights

    ir = read_ir_weights(out / "openvino" / "openvino_model.xml")
    masks = load_file(out / "merge" / "masks.safetensors")
    for name, keep in masks.items():
        w = ir[name.removesuffix(".weight")]
        assert w.kind == "f16" and (w.plain[~keep.numpy()] == 0).all()


def test_int4_export_of_an_fp_merge_is_refused_before_work(tmp_path, tiny_recipe):
    from sqft_intel.export.api import resolve_format
    from sqft_intel.export.config import ExportConfig

    out = tmp_path / "run"
    for stage in ("sparsify", "finetune", "select", "merge"):
        assert run_cli(stage, "--recipe", str(tiny_recipe), "--out", str(out)).returncode == 0
    with pytest.raises(ConfigError, match="needs an INT4 merge"):
        resolve_format(ExportConfig(format="int4"), out / "merge")
    proc = run_cli("export", "--recipe", str(tiny_recipe), "--out", str(out),
                   "--set", "export.format=int4")
    assert proc.returncode == 2 and "needs an INT4 merge" in proc.stderr
    assert not (out / "openvino").exists()


def test_sparse_int8_export_keeps_zeros_and_records_the_sparse_rate(tmp_path, tiny_recipe):
    """W8A8 through optimum-intel/NNCF: int8 weights, zero exactly where pruned, sparse rate kept."""
    from sqft_intel.export.api import export_properties, generate
    from sqft_intel.export.ir_weights import read_ir_weights

    out = tmp_path / "run"
    proc = run_cli("run", "--recipe", str(tiny_recipe), "--out", str(out), "--no-progress",
                   "--set", "export.enabled=true", "--set", "export.format=sparse-int8",
                   "--set", "eval.items=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = load_stage(out / "openvino", expect="export")
    assert rec.config["format"] == "sparse-int8"
    assert export_properties(out / "openvino", "CPU") == {"CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE": 0.5}
    report = json.loads((out / "openvino" / "verify.json").read_text())
    assert report["ok"] and report["new_nonzeros"] == 0 and not report["missing"]
    ir = read_ir_weights(out / "openvino" / "openvino_model.xml")
    masks = load_file(out / "merge" / "masks.safetensors")
    for name, keep in masks.items():
        w = ir[name.removesuffix(".weight")]
        assert w.kind == "i8" and (w.q[~keep.numpy()] == 0).all(), name
    assert isinstance(generate(out / "openvino", "the sun", max_new_tokens=3), str)


def test_chat_in_the_terminal(int4_run):
    """`sqft chat DIR` reads turns from stdin, streams replies, stops at /exit."""
    import os
    import subprocess
    import sys

    out, _ = int4_run
    proc = subprocess.run([sys.executable, "-m", "sqft_intel.cli", "chat", str(out), "--max-new-tokens", "4"],
                          input="which is warmer?\nand the moon?\n/exit\n", capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("you> ") == 3  # two turns answered, then /exit
    turns = proc.stdout.split("you> ")  # "", reply 1 + "\n", reply 2 + "\n", "" (the /exit prompt)
    assert turns[0] == "" and turns[-1] == "", proc.stdout
    assert all(t.endswith("\n") and t.strip() for t in turns[1:-1]), proc.stdout  # non-empty replies
