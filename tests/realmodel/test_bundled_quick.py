"""The real bundled SmolLM2-135M end to end with `sqft run --quick` (about 4 minutes on 2 cores):
the default INT4 chain (Wanda -> GPTQ -> QA-SparsePEFT -> INT4 merge) and the FP SparsePEFT chain
on the same sparse model.

Shares runs across checks (module-scoped fixtures): invariants are checked on the artifacts the CLI
wrote, exactly as a user would get them.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

import sqft_intel as sq
from sqft_intel import load_stage
from tests.conftest import assert_int4_grid, run_cli

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]
LOGIT_TOL = 1e-4  # merged vs unmerged SparsePEFT, fp32: the same function, summed in another order
ONE_ITEM = 1 / 150 + 1e-9  # accuracies over 150 items: one near-tie may fall the other way


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundled") / "run"
    proc = run_cli("run", "--quick", "--out", str(out), "--no-progress", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def fp_run(quick_run, tmp_path_factory):
    """FP SparsePEFT on the quick run's sparse model (its sparsify stage is reused as is)."""
    import shutil

    out = tmp_path_factory.mktemp("bundled-fp") / "run"
    shutil.copytree(quick_run[0] / "sparsify", out / "sparsify")
    proc = run_cli("run", "--quick", "--out", str(out), "--no-progress",
                   "--set", "finetune.mode=sparsepeft", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sparsify: up to date" in proc.stdout
    return out, proc


def test_quick_run_summary(quick_run):
    out, proc = quick_run
    summary = json.loads((out / "summary.json").read_text())
    dense, sparse, int4, tuned = summary["rows"]
    assert dense["sparsity"] < 0.01
    assert all(abs(r["sparsity"] - 0.5) < 0.01 for r in (sparse, int4, tuned))
    assert "INT4 gptq g64" in int4["variant"] and tuned["variant"].endswith("merged INT4")
    assert summary["merge"]["total_new_nonzeros"] == 0
    assert summary["merge"]["mean_unmasked_density"] > 0.99
    # 30 quick steps are too few for an accuracy claim on 150 items (the README quotes the full
    # default run); they must lower the training loss through the INT4 grid
    log = [json.loads(line) for line in (out / "finetune" / "train_log.jsonl").read_text().splitlines()]
    first, last = (sum(r["loss"] for r in part) / len(part) for part in (log[:5], log[-5:]))
    assert last < 0.8 * first
    assert "validation accuracy" in proc.stdout


def test_int4_merge_keeps_the_base_zero_points(quick_run):
    out, _ = quick_run
    base = load_file(out / "quantize" / "int4.safetensors")
    merged = load_file(out / "merge" / "int4.safetensors")
    assert base.keys() == merged.keys() and len(base) == 3 * 210
    changed = 0
    for k in base:
        if k.endswith("qweight"):
            changed += int((base[k] != merged[k]).sum())
        elif k.endswith("scales"):  # the base's zero points, the trained scales, bit for bit
            assert_int4_grid(merged, base, out / "finetune", k.removesuffix(".scales"))
    assert changed > 0


def test_quick_run_ends_with_a_verified_exact_int4_export(quick_run):
    """The bundled model's OpenVINO IR: 210/210 layers bit-exact, no new nonzero, logits match."""
    out, proc = quick_run
    report = json.loads((out / "openvino" / "verify.json").read_text())
    assert report["ok"] and report["format"] == "int4"
    assert report["int4_checked"] == 210 and not report["int4_mismatch"]
    assert report["new_nonzeros"] == 0 and report["max_abs_logit_diff"] < 2e-3
    assert "verify: PASS" in proc.stdout and "generate (OpenVINO GenAI" in proc.stdout


def test_fp_sparsepeft_run_recovers_and_keeps_zeros(fp_run):
    out, _ = fp_run
    summary = json.loads((out / "summary.json").read_text())
    dense, sparse, tuned = summary["rows"]
    assert tuned["acc"] > sparse["acc"] and abs(tuned["sparsity"] - 0.5) < 0.01
    assert summary["merge"]["total_new_nonzeros"] == 0
    report = json.loads((out / "openvino" / "verify.json").read_text())  # FP16 IR of the FP merge
    assert report["ok"] and report["format"] == "fp16" and report["new_nonzeros"] == 0


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


@pytest.mark.parametrize("mode", ["qa-sparsepeft", "sparsepeft"])
def test_merged_equals_unmerged_on_the_real_model(quick_run, fp_run, mode):
    from sqft_intel.recipe import QUICK_OVERRIDES, build_recipe
    from sqft_intel.stages.finetune import load_trained

    out, _ = quick_run if mode == "qa-sparsepeft" else fp_run
    recipe = build_recipe(QUICK_OVERRIDES, {"finetune": {"mode": mode}})
    unmerged, tok, _ = load_trained(recipe, sq.RunDir(out))
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
    """The sparse SmolLM2 in INT4 (group 64): q == z wherever the mask is False. gptq: the quick
    run's own quantize stage; rtn: quantized here from its sparsify stage."""
    import shutil

    from sqft_intel.quantization.int4 import unpack

    src, _ = quick_run
    out = src
    if method == "rtn":
        out = tmp_path / "run"
        shutil.copytree(src / "sparsify", out / "sparsify")
        proc = run_cli("quantize", "--quick", "--out", str(out), "--no-progress",
                       "--set", f"quantize.method={method}", timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
    rec = load_stage(out / "quantize", expect="quantize")
    assert rec.config["method"] == method
    assert rec.config["group_size"] == 64 and rec.metrics["total_new_nonzeros"] == 0
    int4 = load_file(out / "quantize" / "int4.safetensors")
    masks = load_file(out / "sparsify" / "masks.safetensors")
    assert len(masks) == 210
    for name, keep in masks.items():
        q = unpack(int4[f"{name}.qweight"])
        z = int4[f"{name}.zeros"].repeat_interleave(64, dim=1)
        assert (q[~keep] == z[~keep]).all(), name
    assert rec.metrics["mean_rel_error"] < 0.2


def test_lm_eval_merged_and_openvino_agree(quick_run, tmp_path):
    """`sqft eval --harness lm-eval` on the bundled run: the merge equals the unmerged trained model
    and our built-in scorer; the OpenVINO export equals, item by item, the torch model holding
    the IR's own weights (its embeddings/lm_head are INT8, the merge's fp32: like with like)."""
    from sqft_intel.evaluation import harness
    from sqft_intel.recipe import QUICK_OVERRIDES, build_recipe

    out, _ = quick_run
    proc = run_cli("eval", "--quick", "--out", str(out), "--no-progress", "--harness", "lm-eval",
                   timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    v = json.loads((out / "lm_eval.json").read_text())["variants"]
    merged, ov, unmerged = (v[k]["arc_easy"] for k in ("merged", "openvino", "base + adapters (unmerged)"))
    assert merged["n"] == ov["n"] == 150
    # merged == unmerged: the INT4 merge is bit-exact, the forwards differ only in summation order
    assert abs(merged["acc"] - unmerged["acc"]) <= ONE_ITEM
    # lm-eval and the built-in scorer compute the same fp32 log-likelihoods (60/60 items within
    # 1e-3 nats, test_harness); they sum them in another order, which may flip one near-tie
    tuned = json.loads((out / "summary.json").read_text())["rows"][-1]
    assert abs(merged["acc"] - tuned["acc"]) <= ONE_ITEM

    # OpenVINO vs the torch model with the IR's weights, per choice, on 40 of the items
    items = {"arc_easy": build_recipe(QUICK_OVERRIDES, {"eval": {"items": 40}}).splits.eval}
    reference, tok = sq.ir_reference(out / "openvino", out / "merge")
    logprobs = {}
    for name, lm in (("torch", harness.harness_lm(reference.eval(), tok, batch_size=8)),
                     ("openvino", harness.harness_lm(openvino_dir=out / "openvino", work=tmp_path,
                                                     batch_size=8))):
        res = harness.run_harness(lm, ["arc_easy"], items, tmp_path / name, log_samples=True)
        logprobs[name] = harness.sample_logprobs(res, "arc_easy")
    assert len(logprobs["torch"]) == len(logprobs["openvino"]) == 40
    for doc, lps in logprobs["torch"].items():
        # `sqft verify`'s logit tolerance: f32 graphs that sum in another order
        assert lps == pytest.approx(logprobs["openvino"][doc], abs=2e-3), doc


def test_generative_eval_scores_every_variant_and_the_deployed_export(quick_run, tmp_path):
    """`sqft eval` of a generative task (BoolQ by generation, commonsense_170k's Alpaca prompt):
    every variant and the OpenVINO export generate the same items, each with its per-item records
    beside the summary; the export (GenAI) says what the torch model holding the IR's own weights
    says (greedy, fp32 parity settings)."""
    import shutil

    from sqft_intel.evaluation.generate import generate_torch
    from sqft_intel.evaluation.generative import read_records

    out = tmp_path / "run"
    shutil.copytree(quick_run[0], out)
    proc = run_cli("eval", "--quick", "--out", str(out), "--no-progress",
                   "--set", "data.task=commonsense_boolq", "--set", "eval.items=8",
                   "--set", "eval.max_new_tokens=8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "commonsense_boolq by generation" in proc.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["generative"] and s["task"] == "commonsense_boolq" and s["eval_items"] == 8
    assert [r["variant"] for r in s["rows"]] == [
        "dense", "sparse (50% wanda)", "sparse (50% wanda, INT4 gptq g64)",
        "sparse + NLS qa-sparsepeft, merged INT4", "openvino export"]
    prompts = None
    for r in s["rows"]:
        recs = read_records(out / r["records"])
        assert len(recs) == r["n"] == 8
        assert prompts is None or [x["prompt"] for x in recs] == prompts  # the same items
        prompts = [x["prompt"] for x in recs]
        assert r["scores"]["commonsense_boolq"]["acc"] == sum(x["correct"]["acc"] for x in recs) / 8
        assert {x["gold"] for x in recs} <= {"true", "false"}
    ov = read_records(out / s["rows"][-1]["records"])
    reference, tok = sq.ir_reference(out / "openvino", out / "merge")
    texts = generate_torch(reference.eval(), tok, prompts, max_new_tokens=8, progress=False)
    same = sum(x["generation"] == t for x, t in zip(ov, texts, strict=True))
    # one greedy near-tie (logits within verify's 2e-3) may take another token
    assert same >= 7, [(x["generation"], t) for x, t in zip(ov, texts, strict=True)]


def test_bundled_tokenizer_has_smollm2s_special_tokens():
    """eos = pad = <|im_end|> (where every runtime stops), no BOS prepended, and the generation
    config agrees; the conversion cache is versioned, so an older converted copy is not reused."""
    from transformers import AutoTokenizer, GenerationConfig

    from sqft_intel.models import CONVERSION_VERSION, bundled_model_dir

    folder = bundled_model_dir("smollm2-135m")
    assert folder.name.endswith(f"-v{CONVERSION_VERSION}")
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    text = "Question: Which is warmer?"
    assert tok(text)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]  # no BOS
    gen = GenerationConfig.from_pretrained(folder)
    assert gen.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")


COMPLETION = "Question: Which gas do plants take in from the air?\nAnswer:"
CHAT = "Which gas do plants take in from the air?"
MAX_NEW = 48


def test_export_answers_and_stops_with_genai_defaults(quick_run):
    """The deployed artifact answers: stock `LLMPipeline(export).generate(text)` (GenAI applies the
    chat template by default) returns text and stops at the end token before max_new_tokens, for a
    question and for a completion-style prompt; so does the raw completion prompt."""
    import openvino_genai as ov_genai

    pipe = ov_genai.LLMPipeline(str(quick_run[0] / "openvino"), "CPU")
    for prompt, template in ((CHAT, True), (COMPLETION, True), (COMPLETION, False)):
        cfg = pipe.get_generation_config()
        cfg.max_new_tokens, cfg.apply_chat_template = MAX_NEW, template
        res = pipe.generate([prompt], cfg)
        assert res.texts[0].strip(), (prompt, template)
        assert res.perf_metrics.get_num_generated_tokens() < MAX_NEW, (prompt, template, res.texts)


def test_export_answers_and_stops_through_optimum_and_the_server(quick_run):
    """`OVModelForCausalLM.generate` ends with <|im_end|>; deploy/'s /v1/completions and
    /v1/chat/completions answer with finish_reason "stop"."""
    import http.client

    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    from deploy.engine import BatchingEngine
    from deploy.server import BackgroundServer, ServerConfig, make_app

    export = quick_run[0] / "openvino"
    tok = AutoTokenizer.from_pretrained(export)
    model = OVModelForCausalLM.from_pretrained(export)
    chat = tok.apply_chat_template([{"role": "user", "content": CHAT}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)
    for ids in (tok(COMPLETION, return_tensors="pt"), chat):
        new = model.generate(**ids, max_new_tokens=MAX_NEW)[0, ids["input_ids"].shape[1]:].tolist()
        assert len(new) > 1 and new[-1] == tok.convert_tokens_to_ids("<|im_end|>"), tok.decode(new)

    engine = BatchingEngine(export)
    config = ServerConfig(port=0)
    server = BackgroundServer(make_app(engine, config), config, log_level="warning")
    try:
        for path, body in (("/v1/completions", {"prompt": COMPLETION}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": CHAT}]})):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
            conn.request("POST", path, json.dumps({**body, "max_tokens": MAX_NEW}),
                         {"Content-Type": "application/json"})
            reply = json.loads(conn.getresponse().read())
            choice = reply["choices"][0]
            text = choice["text"] if "text" in choice else choice["message"]["content"]
            assert choice["finish_reason"] == "stop" and text.strip(), (path, reply)
            assert reply["usage"]["completion_tokens"] < MAX_NEW
    finally:
        server.stop()
        engine.close()
