"""The real bundled SmolLM2-135M end to end with `sqft run --quick` (about 3 minutes on 2 cores).

Shares one run across its checks (module-scoped fixture): invariants are checked on the artifacts
the CLI wrote, exactly as a user would get them.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

import sqft_intel as sq
from sqft_intel import load_stage
from tests.conftest import run_cli

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]
LOGIT_TOL = 1e-4  # DESIGN §6: merged vs unmerged SparsePEFT, fp32


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundled") / "run"
    proc = run_cli("run", "--quick", "--out", str(out), "--no-progress", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_quick_run_summary(quick_run):
    out, proc = quick_run
    summary = json.loads((out / "summary.json").read_text())
    dense, sparse, tuned = summary["rows"]
    assert dense["sparsity"] < 0.01 and abs(sparse["sparsity"] - 0.5) < 0.01
    assert abs(tuned["sparsity"] - 0.5) < 0.01
    assert summary["merge"]["total_new_nonzeros"] == 0
    assert summary["merge"]["mean_unmasked_density"] > 0.99
    # the whole point: NLS SparsePEFT recovers accuracy the pruning lost (150 items, 30 steps)
    assert tuned["acc"] > sparse["acc"]
    assert "validation accuracy" in proc.stdout


def test_merged_weights_keep_the_stored_masks(quick_run):
    out, _ = quick_run
    masks = load_file(out / "sparsify" / "masks.safetensors")
    assert len(masks) == 30 * 7
    merged = load_file(out / "merge" / "model.safetensors")
    new_nonzeros = 0
    for name, keep in masks.items():
        w = merged[name]
        new_nonzeros += int((w[~keep] != 0).sum())
        assert int((w != 0).sum()) <= int(keep.sum())
    assert new_nonzeros == 0


def test_merged_equals_unmerged_sparsepeft_on_the_real_model(quick_run):
    from sqft_intel.pipeline import _trained_model
    from sqft_intel.recipe import QUICK_OVERRIDES, build_recipe

    out, _ = quick_run
    recipe = build_recipe(QUICK_OVERRIDES)
    unmerged, tok, _ = _trained_model(recipe, out)
    sq.set_active_ranks_(unmerged, load_stage(out / "select").metrics["ranks"])
    merged, _ = sq.load_model(str(out / "merge"))
    ids = tok(["Question: Which gas do plants take in?\nAnswer: carbon dioxide",
               "Question: What melts ice?\nAnswer: heat from the sun"],
              return_tensors="pt", padding=True)
    with torch.no_grad():
        a = unmerged.eval()(**ids).logits
        b = merged(**ids).logits
    torch.testing.assert_close(b, a, atol=LOGIT_TOL, rtol=0)


def test_bundled_tokenizer_decoder_round_trips():
    """The cached tokenizer swaps the GGUF decoder for plain ByteLevel: same ids, same text."""
    from transformers import AutoTokenizer

    from sqft_intel.models import bundled_model_dir

    tok = AutoTokenizer.from_pretrained(bundled_model_dir("smollm2-135m"))
    for text in ["Question: Which is warmer?\nAnswer: the sun", "naïve café — 42°C, ½ cup 🍵"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_int4_on_the_bundled_model_keeps_every_zero(quick_run, tmp_path, method):
    """Quantize the quick run's sparse SmolLM2 (group 64): q == z wherever the mask is False."""
    import shutil

    from sqft_intel.quantization.int4 import unpack

    src, _ = quick_run
    out = tmp_path / "run"
    shutil.copytree(src / "sparsify", out / "sparsify")
    proc = run_cli("quantize", "--quick", "--out", str(out), "--no-progress",
                   "--set", f"quantize.method={method}", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = load_stage(out / "quantize", expect="quantize")
    assert rec.config["group_size"] == 64 and rec.metrics["total_new_nonzeros"] == 0
    int4 = load_file(out / "quantize" / "int4.safetensors")
    masks = load_file(out / "sparsify" / "masks.safetensors")
    assert len(masks) == 210
    for name, keep in masks.items():
        q = unpack(int4[f"{name}.qweight"])
        z = int4[f"{name}.zeros"].repeat_interleave(64, dim=1)
        assert (q[~keep] == z[~keep]).all(), name
    assert rec.metrics["mean_rel_error"] < 0.2
