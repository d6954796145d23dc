"""Greedy generation for generative evaluation: the torch model and the OpenVINO export, same items.

Both backends follow lm-eval's `generate_until`: the prompt is encoded without special tokens,
decoding is greedy, a sequence ends at an end token (the tokenizer's and the generation config's)
or once its text holds a stop string, and the returned text is cut before the first stop string.
So the texts of the two backends compare character for character.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..device import autocast
from ..errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    """What one `generate_*` call did, for throughput figures: filled in when passed as `stats=`.

    `new_tokens` counts the tokens each sequence generated up to and including the one that ended
    it (an end token, or the token completing a stop string); padding after the end is not counted.
    """

    items: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (without) the earliest occurrence of any non-empty stop string (lm-eval `until`)."""
    cut = len(text)
    for s in stop:
        if s and (i := text.find(s)) != -1:
            cut = min(cut, i)
    return text[:cut]


def end_token_ids(model: nn.Module, tokenizer) -> tuple[int, ...]:
    """The tokenizer's EOS and the generation config's `eos_token_id` (an int or a list), sorted."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list | tuple) else [gen_eos])
    return tuple(sorted(i for i in ids if i is not None))


def _prompt_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids without special tokens (lm-eval's encoding for our models)."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def _check_lengths(lengths: list[int], max_new_tokens: int, limit: int | None) -> None:
    """Refuse, before any work, a prompt that would run past the model's positions."""
    if max_new_tokens < 1:
        raise ConfigError(f"`max_new_tokens`={max_new_tokens}; use a positive number of tokens.")
    if 0 in lengths:
        raise ConfigError(f"prompt {lengths.index(0)} is empty; generation needs a prompt of at "
                          "least one token.")
    if limit is None or not lengths:
        return
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] + max_new_tokens > limit:
        raise ConfigError(
            f"prompt {longest} has {lengths[longest]} tokens; with `max_new_tokens`={max_new_tokens} "
            f"that passes the model's {limit} positions (prompts are never cut); lower "
            "`max_new_tokens` or use fewer few-shot examples.")


class _StopOnText:
    """A transformers stopping criterion: per sequence, True once its generated text holds a stop
    string. Records the length at which each sequence stopped (later tokens are padding).

    The whole generated text is decoded each step, as lm-eval's `MultiTokenEOSCriteria` decodes a
    window: a stop string split over tokens, or inside one token with more text after it, counts.
    """

    def __init__(self, tokenizer, stop: Sequence[str], prompt_len: int, batch: int):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, [s for s in stop if s], prompt_len
        self.stopped_at: list[int | None] = [None] * batch

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stop:
            return done
        for b, at in enumerate(self.stopped_at):
            if at is not None:
                done[b] = True
                continue
            text = self.tokenizer.decode(input_ids[b, self.prompt_len:], skip_special_tokens=True)
            if any(s in text for s in self.stop):
                self.stopped_at[b] = input_ids.shape[1]
                done[b] = True
        return done


@torch.no_grad()
def generate_torch(
    model: nn.Module, tokenizer, prompts: list[str], *, max_new_tokens: int,
    stop: Sequence[str] = (), batch_size: int = 8, device: torch.device | None = None,
    dtype: torch.dtype = torch.float32, progress: bool = True,
    stats: GenerationStats | None = None,
) -> list[str]:
    """Greedy continuations of `prompts`, in their order, each cut before its first stop string.

    Batched with the KV cache and left padding (transformers' `generate`); prompts are sorted by
    length so a batch pads little. A sequence ends at an end token (`end_token_ids`) or once its
    text holds a stop string, whichever comes first, independently of the others in its batch.
    In fp32, a batch gives the texts one-by-one decoding gives (tested).

    Args:
        prompts: Raw text, encoded without special tokens (write a BOS into the text if wanted).
        max_new_tokens: Most tokens generated per prompt.
        stop: Stop strings (lm-eval `until`); the text returned ends before the first one found.
        batch_size: Prompts per forward.
        device: Where the model is; default: its parameters' device.
        dtype: Autocast dtype (`device.autocast`); fp32 runs without autocast.
        stats: Filled with the items, generated tokens and seconds of this call.

    Returns:
        One text per prompt, end tokens and special tokens dropped.

    Raises:
        ConfigError: a prompt plus `max_new_tokens` passes the model's positions (before any work).

    Example:
        >>> texts = generate_torch(model, tok, ["Question: 2+2?\\nAnswer:"], max_new_tokens=32,
        ...                        stop=("Question:",))
    """
    from transformers import GenerationConfig, StoppingCriteriaList

    ids = _prompt_ids(tokenizer, prompts)
    _check_lengths([len(i) for i in ids], max_new_tokens,
                   getattr(model.config, "max_position_embeddings", None))
    device = device or next(model.parameters()).device
    eos = end_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=list(eos), pad_token_id=pad)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: OOM shows at once
    out: list[str] = [""] * len(ids)
    new_tokens, start_t = 0, time.perf_counter()
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(order), desc="generating", unit="item", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        t = max(len(ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), t), pad, dtype=torch.long)
        attn = torch.zeros((len(chunk), t), dtype=torch.long)
        for b, i in enumerate(chunk):  # left padding: every prompt ends where generation starts
            input_ids[b, t - len(ids[i]):] = torch.tensor(ids[i])
            attn[b, t - len(ids[i]):] = 1
        on_text = _StopOnText(tokenizer, stop, t, len(chunk))
        with autocast(device, dtype):
            seqs = model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device),
                                  generation_config=config, use_model_defaults=False,
                                  stopping_criteria=StoppingCriteriaList([on_text]))
        for b, i in enumerate(chunk):
            gen = seqs[b, t:(on_text.stopped_at[b] or seqs.shape[1])].tolist()
            end = next((k for k, tok in enumerate(gen) if tok in eos), None)
            new_tokens += len(gen) if end is None else end + 1
            text = tokenizer.decode(gen[:end], skip_special_tokens=True)
            out[i] = cut_at_stop(text, stop)
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    _record(stats, len(ids), new_tokens, time.perf_counter() - start_t, "torch")
    return out


def _record(stats: GenerationStats | None, items: int, new_tokens: int, seconds: float,
            backend: str) -> None:
    log.info("%s: %d items, %d new tokens in %.1f s (%.1f tokens/s)", backend, items, new_tokens,
             seconds, new_tokens / seconds if seconds else 0.0)
    if stats is not None:
        stats.items, stats.new_tokens, stats.seconds = items, new_tokens, seconds


def generate_openvino(
    export_dir: Path, prompts: list[str], *, max_new_tokens: int, stop: Sequence[str] = (),
    batch_size: int = 8, device: str = "CPU", parity: bool = True, progress: bool = True,
    stats: GenerationStats | None = None,
) -> list[str]:
    """`generate_torch` on an OpenVINO export, through OpenVINO GenAI's `LLMPipeline`.

    The same protocol: prompts encoded by the export's tokenizer IR without special tokens and
    no chat template (GenAI gets token ids), greedy, ending at the export's end tokens
    (generation_config.json's and the tokenizer's EOS) or a stop string, texts cut before the
    first stop string by the same `cut_at_stop`. GenAI is asked to keep the stop string and the
    text is cut here: left to itself, GenAI drops whole tokens and the white space before a stop
    string, which lm-eval's `until` keeps.

    Args:
        export_dir: An export stage directory (`openvino_model.xml` + tokenizer IRs).
        batch_size: Prompts per `generate` call.
        device: OpenVINO device.
        parity: Compile with `export.api.PARITY_CONFIG` (f32 math, no dynamic quantization of
            activations, f32 KV cache: torch-like numbers). False: the plugin's defaults, as
            `deploy/` serves the export.
        stats: Filled with the items, generated tokens and seconds of this call.

    Returns:
        One text per prompt, in order.

    Raises:
        ArtifactError: `export_dir` holds no IR.
        ConfigError: a prompt plus `max_new_tokens` passes the model's positions (before any work).
    """
    import openvino_genai as ov_genai

    from ..export.api import PARITY_CONFIG, export_properties
    from ..export.config import MODEL_XML

    export_dir = Path(export_dir)
    if not (export_dir / MODEL_XML).is_file():
        raise ArtifactError(f"`{export_dir}` holds no {MODEL_XML}; run `sqft export` first.")
    tok = ov_genai.Tokenizer(str(export_dir))
    ids = [tok.encode(p, add_special_tokens=False).input_ids.data[0].tolist() for p in prompts]
    config_json = export_dir / "config.json"
    limit = (json.loads(config_json.read_text()).get("max_position_embeddings")
             if config_json.is_file() else None)
    _check_lengths([len(i) for i in ids], max_new_tokens, limit)
    props = {**export_properties(export_dir, device), **(PARITY_CONFIG if parity else {})}
    pipe = ov_genai.LLMPipeline(str(export_dir), device, **props)
    cfg = pipe.get_generation_config()  # generation_config.json's eos, as export.api.generate
    cfg.max_new_tokens, cfg.do_sample, cfg.apply_chat_template = max_new_tokens, False, False
    eos = {i for i in set(cfg.stop_token_ids) | {cfg.eos_token_id, tok.get_eos_token_id()} if i >= 0}
    cfg.stop_token_ids = eos
    cfg.stop_strings = {s for s in stop if s}
    cfg.include_stop_str_in_output = True
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out: list[str] = [""] * len(prompts)
    new_tokens, start_t = 0, time.perf_counter()
    bar = tqdm(total=len(prompts), desc="generating (OpenVINO)", unit="item", disable=not progress,
               leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        # token ids, not strings: `generate(list[str])` adds the tokenizer's special tokens and
        # ignores `add_special_tokens=False` (measured at 2026.4.1); left-padded batch, mask given
        res = pipe.generate(tok.encode([prompts[i] for i in chunk], add_special_tokens=False,
                                       padding_side="left"), cfg)
        for i, gen in zip(chunk, res.tokens, strict=True):
            end = next((k for k, t in enumerate(gen) if t in eos), None)
            new_tokens += len(gen) if end is None else end + 1
            out[i] = cut_at_stop(tok.decode(gen[:end], skip_special_tokens=True), stop)
        bar.update(len(chunk))
    bar.close()
    _record(stats, len(prompts), new_tokens, time.perf_counter() - start_t, "openvino")
    return out
