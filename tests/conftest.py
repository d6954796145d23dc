"""Shared fixtures: tiny random Llamas built offline (tests never touch a hub), tiny task files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))  # oversubscription costs 10x on small boxes
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _sqft_cache(tmp_path_factory):
    """Tests write only under pytest's temp dirs: the bundled-model conversion cache included,
    unless the caller points SQFT_CACHE at an existing cache on purpose."""
    if "SQFT_CACHE" not in os.environ:
        os.environ["SQFT_CACHE"] = str(tmp_path_factory.mktemp("sqft-cache"))
    yield

WORDS = ("the sun moon star water fire earth air plant animal rock metal heat cold light dark "
         "question answer which what why how is are of to in a an by for from with").split()


def _mc_rows(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        pick = lambda k: " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g))  # noqa: E731
        choices = [pick(2) for _ in range(4)]
        rows.append({"query": f"Question: {pick(6)}?\nAnswer:", "choices": choices,
                     "gold": int(torch.randint(4, (1,), generator=g))})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return build_tiny_tokenizer()


def build_tiny_tokenizer():
    """A byte-level BPE trained on the fixture vocabulary: a real fast tokenizer, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(WORDS)] * 20 + ["Question: Answer: ?\n"] * 20
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant:{% endif %}")
    return fast


def make_tiny_llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, eos_token_id=0, pad_token_id=0,
                      bos_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    return make_tiny_llama(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A save_pretrained folder of a tiny Llama with its tokenizer."""
    d = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(len(tiny_tokenizer)).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tiny-task")
    return write_jsonl(d / "train.jsonl", _mc_rows(64, 0)), write_jsonl(d / "val.jsonl", _mc_rows(24, 1))


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir, tiny_task) -> Path:
    return write_tiny_recipe(tmp_path, tiny_model_dir, *tiny_task)


def write_tiny_recipe(folder: Path, model_dir: Path, train: Path, val: Path) -> Path:
    """A recipe running every stage on the tiny model in seconds (FP SparsePEFT: the INT4 chain,
    the default, is run by tests that set `finetune.mode=qa-sparsepeft`). Plain prompts: the
    default `auto` would train the tiny model half through its chat template, and what a random
    135k-parameter model then says to a chat turn (often nothing) is not what these tests check;
    `auto`/`mixed` are tested in tests/unit/test_prompt_format.py and on the bundled model."""
    import yaml

    recipe = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train_file": str(train), "eval_file": str(val), "prompt_format": "plain"},
        "sparsify": {"calib_samples": 4, "calib_seq_len": 32},
        "quantize": {"calib_samples": 4, "calib_seq_len": 32},
        "finetune": {"mode": "sparsepeft", "steps": 4, "batch_size": 4, "rank_space": [8, 6, 4],
                     "alpha": 16, "checkpoint_every": 2, "max_length": 64, "precision": "fp32"},
        "export": {"enabled": False},  # tests/integration/test_export.py turns it on
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="session")
def tiny_int4_run(tmp_path_factory, tiny_model_dir, tiny_task):
    """The default INT4 chain on the tiny model through the CLI: sparsify -> quantize (g32) ->
    QA-SparsePEFT -> INT4 merge -> exact INT4 OpenVINO export + verify. Returns (OUT, stdout)."""
    tmp = tmp_path_factory.mktemp("tiny-int4")
    recipe = write_tiny_recipe(tmp, tiny_model_dir, *tiny_task)
    out = tmp / "run"
    proc = run_cli("run", "--recipe", str(recipe), "--out", str(out), "--no-progress",
                   "--set", "finetune.mode=qa-sparsepeft", "--set", "quantize.group_size=32",
                   "--set", "finetune.lr=0.02", "--set", "eval.items=4",
                   "--set", "export.enabled=true")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc.stdout


@pytest.fixture(scope="session")
def tiny_fp_run(tmp_path_factory, tiny_model_dir, tiny_task):
    """The tiny FP chain, once per session, through the CLI: `sqft run` on `write_tiny_recipe`'s
    recipe as it is (sparsify -> SparsePEFT finetune -> select -> merge -> eval -> report, no
    export). Returns (OUT, stdout). Read it in place; a test that writes into a run works on a
    copy (`copy_run`). Its stages are up to date for `tiny_recipe`: same model, data and sections.
    """
    tmp = tmp_path_factory.mktemp("tiny-fp")
    recipe = write_tiny_recipe(tmp, tiny_model_dir, *tiny_task)
    out = tmp / "run"
    proc = run_cli("run", "--recipe", str(recipe), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc.stdout


def copy_run(src: Path, dst: Path, stages: tuple[str, ...] | None = None) -> Path:
    """Copy a finished run (or only the folders of `stages`) to `dst`; returns `dst`.

    Contents and file times are kept: the copied stages are up to date for the recipe that wrote
    them (their fingerprints are in their stage.json), so a stage run on the copy reuses them.
    """
    from sqft_intel.run_dir import RunDir

    if stages is None:
        shutil.copytree(src, dst)
    else:
        for name in stages:
            shutil.copytree(RunDir(src).stage(name), RunDir(dst).stage(name))
    return dst


@pytest.fixture
def sqft_main(capsys):
    """`sqft ARGS...` in this process: `sqft_main(*args)` -> (exit code, stdout, stderr).

    The same parsing, recipe building, validation and error reporting as the `sqft` command,
    without a subprocess spending seconds importing torch (`run_cli` covers the entry point).
    The logger and torch threads that `cli.main` sets up are put back afterwards.
    """
    import logging

    from sqft_intel import cli

    logger = logging.getLogger("sqft_intel")
    saved = (logger.level, list(logger.handlers), logger.propagate, torch.get_num_threads())

    def main(*args: str) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield main
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]
    torch.set_num_threads(saved[3])


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 900):
    """Run `python -m sqft_intel.cli ...` in a subprocess, as a user would."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sqft_intel.cli", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


def merge_keeping_logits(model, masks, tol: float):
    """`merge_` the model's adapters and check its logits did not move by more than `tol`."""
    import torch

    import sqft_intel as sq

    ids = torch.randint(300, (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    res = sq.merge_(model, masks=masks)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=tol, rtol=0)
    return res


def assert_int4_grid(merged: dict, base: dict, finetune_dir: Path, name: str) -> None:
    """The merged layer `name` sits on the base's zero points, with the scales QA-SparsePEFT
    trained (its fp32 masters as the forward used them: clamped, fp16) or, when they were frozen,
    the base's scales, bit for bit."""
    import torch
    from safetensors.torch import load_file

    from sqft_intel.quantization.int4 import FP16_TINY

    assert torch.equal(merged[f"{name}.zeros"], base[f"{name}.zeros"]), name
    trained = load_file(Path(finetune_dir) / "adapters.safetensors")
    learned = trained.get(f"{name.removesuffix('.weight')}.learned_scales")
    want = base[f"{name}.scales"] if learned is None else learned.clamp(min=FP16_TINY).half()
    assert torch.equal(merged[f"{name}.scales"], want), name
