import pytest
import torch

from sqft_intel import ConfigError
from sqft_intel import device as dev


def test_auto_device_is_cpu_without_xpu(monkeypatch):
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")


def test_auto_device_prefers_xpu(monkeypatch):
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("xpu")


def test_explicit_and_bad_devices():
    assert dev.resolve_device("xpu:1") == torch.device("xpu:1")
    with pytest.raises(ConfigError, match="cuda"):
        dev.resolve_device("cuda")


@pytest.mark.parametrize("flags, expected", [
    ({"amx_bf16", "avx512f"}, torch.bfloat16),
    ({"avx512_bf16"}, torch.bfloat16),
    ({"avx2"}, torch.float32),
])
def test_auto_precision_follows_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset(flags))
    assert dev.resolve_precision("auto", torch.device("cpu")) == expected


def test_explicit_precision_and_xpu():
    assert dev.resolve_precision("fp32", torch.device("xpu")) == torch.float32
    assert dev.resolve_precision("auto", torch.device("xpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16"):
        dev.resolve_precision("fp16", torch.device("cpu"))


def test_set_threads_is_explicit():
    n = torch.get_num_threads()
    try:
        assert dev.set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)
