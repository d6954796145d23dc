"""Greedy generation on the OpenVINO export through GenAI (`generate_openvino`): the same texts as
torch on the tiny INT4 export's own weights, and prompts encoded without special tokens."""

from __future__ import annotations

import pytest

from sqft_intel.evaluation.generate import GenerationStats, generate_openvino, generate_torch
from tests.conftest import WORDS
from tests.unit.test_generate import PROMPTS


@pytest.mark.slow
def test_openvino_genai_generations_equal_torch(tiny_int4_run):
    """The exported INT4 tiny model through `LLMPipeline` (f32 parity config) against its torch
    reference (`ir_reference`: the merged model with the IR's decoded INT8 head/embeddings)."""
    from sqft_intel.export.verify import ir_reference

    out, _ = tiny_int4_run
    model, tok = ir_reference(out / "openvino")
    kw = {"max_new_tokens": 16, "progress": False}
    free = generate_torch(model, tok, PROMPTS, **kw)
    stop = next((w for w in WORDS if 0 < sum(f" {w}" in t for t in free) < len(free)), "the")
    stops = (f" {stop}", "Question:")
    torch_stats, ov_stats = GenerationStats(), GenerationStats()
    want = generate_torch(model, tok, PROMPTS, stop=stops, batch_size=4, stats=torch_stats, **kw)
    got = generate_openvino(out / "openvino", PROMPTS, stop=stops, batch_size=4, stats=ov_stats,
                            **kw)
    one = generate_openvino(out / "openvino", PROMPTS, stop=stops, batch_size=1, **kw)
    assert got == one == want
    assert ov_stats.new_tokens == torch_stats.new_tokens
    print(f"torch {torch_stats.tokens_per_s:.0f} tok/s, OpenVINO {ov_stats.tokens_per_s:.0f} tok/s")


@pytest.mark.slow
def test_both_backends_encode_prompts_without_special_tokens(tiny_int4_run, tmp_path):
    """With a tokenizer that prepends BOS (as GGUF conversions do), neither backend adds it: GenAI's
    `generate(list[str])` would, whatever `add_special_tokens` says, so it is given token ids."""
    import shutil

    import openvino_genai as ov_genai
    from tokenizers import processors

    from sqft_intel.export.ir import export_tokenizer
    from sqft_intel.export.verify import ir_reference
    from tests.conftest import build_tiny_tokenizer

    out, _ = tiny_int4_run
    model, _ = ir_reference(out / "openvino")
    tok = build_tiny_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<eos> $A", special_tokens=[("<eos>", 0)])
    export = shutil.copytree(out / "openvino", tmp_path / "openvino")
    export_tokenizer(tok, export)
    assert tok(PROMPTS[0])["input_ids"][0] == 0  # both tokenizers do add BOS by default
    assert ov_genai.Tokenizer(str(export)).encode(PROMPTS[0]).input_ids.data[0][0] == 0
    kw = {"max_new_tokens": 12, "progress": False}
    want = generate_torch(model, tok, PROMPTS, **kw)
    assert want == generate_torch(model, build_tiny_tokenizer(), PROMPTS, **kw)  # no BOS: same
    assert generate_openvino(export, PROMPTS, **kw) == want


# ---------------------------------------------------------------- scoring
