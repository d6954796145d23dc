"""`sparse-int8` export: W8A8 through optimum-intel/NNCF with every zero kept, plus the measurement
of whether OpenVINO's sparse-weight CPU kernels run and what they buy.

Why W8A8: OpenVINO's CPU sparse-weight decompression (`CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`)
applies only to int8 weights with int8 activations; INT4/INT8 weight-only layers never use it.
Symmetric per-channel INT8 maps 0 to 0 and SmoothQuant only rescales channels, so the zeros stay.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from torch import nn

SPARSE_RATE_KEY = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"


def export_sparse_int8(model: nn.Module, tokenizer, out_dir: Path, *, calib_texts: list[str],
                       num_samples: int = 32) -> None:
    """FP32 IR of `model`, then NNCF W8A8 (symmetric weights) calibrated on `calib_texts`."""
    from optimum.intel import OVConfig, OVModelForCausalLM, OVQuantizationConfig, OVQuantizer

    from .ir import _export

    out_dir = Path(out_dir)
    fp_dir = Path(tempfile.mkdtemp(prefix=".fp32-", dir=out_dir.parent))
    try:
        _export(model, fp_dir, fp16=False)
        tokenizer.save_pretrained(fp_dir)
        ov_model = OVModelForCausalLM.from_pretrained(fp_dir, compile=False)
        config = OVQuantizationConfig(bits=8, sym=True, dataset=list(calib_texts[:num_samples]),
                                      num_samples=min(num_samples, len(calib_texts)),
                                      tokenizer=str(fp_dir))
        OVQuantizer.from_pretrained(ov_model).quantize(ov_config=OVConfig(quantization_config=config),
                                                       save_directory=out_dir)
    finally:
        shutil.rmtree(fp_dir, ignore_errors=True)


def compile_properties(fmt: str, sparse_rate: float) -> dict:
    """CPU compile properties an export of format `fmt` should run with."""
    return {SPARSE_RATE_KEY: float(sparse_rate)} if fmt == "sparse-int8" else {}


def primitive_counts(compiled) -> dict[str, int]:
    """How many runtime nodes use each primitive (`primitiveType`), e.g. brgemm_avx512_amx_sparse_i8."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and rt["layerType"].astype(str) in ("FullyConnected", "MatMul"):
            p = rt["primitiveType"].astype(str) if "primitiveType" in rt else "?"
            counts[p] = counts.get(p, 0) + 1
    return counts


def measure_latency(xml: Path, properties: dict, *, prompt_len: int = 128, decode_steps: int = 32,
                    repeats: int = 3) -> dict:
    """Prefill (one `prompt_len` forward) and per-token decode latency of a stateful LLM IR, plus the
    FullyConnected primitives the CPU plugin chose."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": 0, **properties})
    req = compiled.create_infer_request()
    names = {i.get_any_name() for i in compiled.inputs}
    rng = np.random.default_rng(0)
    prefill, decode = [], []
    for _ in range(repeats + 1):  # the first round warms up
        req.reset_state()
        ids = rng.integers(100, 1000, size=(1, prompt_len), dtype=np.int64)

        def feed(ids, past):
            n = ids.shape[1]
            x = {"input_ids": ids, "attention_mask": np.ones((1, past + n), dtype=np.int64)}
            if "position_ids" in names:
                x["position_ids"] = np.arange(past, past + n, dtype=np.int64)[None]
            if "beam_idx" in names:
                x["beam_idx"] = np.zeros(1, dtype=np.int32)
            t0 = time.perf_counter()
            req.infer(x)
            return time.perf_counter() - t0

        p = feed(ids, 0)
        d = [feed(ids[:, -1:], prompt_len + k) for k in range(decode_steps)]
        prefill.append(p)
        decode.append(statistics.median(d))
    return {"prefill_s": statistics.median(prefill[1:]), "decode_token_s": statistics.median(decode[1:]),
            "primitives": primitive_counts(compiled)}
