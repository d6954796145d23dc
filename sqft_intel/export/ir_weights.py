"""Read the weights back out of an OpenVINO IR: integers, scales and zero points as stored.

`sqft verify` needs what the IR really holds, not what we meant to write. Each MatMul/Gather the
exporter names `__module.<fqn>/aten::linear|embedding/...` is followed back through its constant
decompression subgraph (Convert, Subtract, Multiply, Reshape) to the constants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_LAYER = re.compile(r"^__module\.(.+?)/aten::(linear|embedding)/(MatMul|Gather)$")
_INT_TYPES = {"u4": 4, "u8": 8, "i8": 8, "i4": 4}


@dataclass
class IRWeight:
    """One layer's weight as the IR stores it.

    kind: `u4`, `u8`, `i8` (integers + scales [+ zero points]) or `f16`/`f32` (plain constant).
    q: (out, in) integers (unsigned or signed as stored) or None; scales, zeros: (out, in/g) or None.
    """

    fqn: str
    kind: str
    shape: tuple[int, int]
    q: np.ndarray | None = None
    scales: np.ndarray | None = None
    zeros: np.ndarray | None = None
    plain: np.ndarray | None = None

    def dequantized(self) -> np.ndarray:
        """(out, in) float32: σ (q - z), or the plain constant."""
        if self.q is None:
            return self.plain.astype(np.float32).reshape(self.shape)
        g = self.shape[1] // self.scales.shape[1]
        z = 0 if self.zeros is None else np.repeat(self.zeros.astype(np.float32), g, axis=1)
        s = np.repeat(self.scales.astype(np.float32), g, axis=1)
        return s * (self.q.astype(np.float32) - z)


def _etype(node) -> str:
    return node.get_output_element_type(0).get_type_name()


def _unpack4(packed: np.ndarray, n: int, signed: bool) -> np.ndarray:
    """OpenVINO's 4-bit constants: two per byte, the first element in the low nibble."""
    b = packed.view(np.uint8).ravel()
    v = np.stack([b & 0x0F, b >> 4], axis=-1).ravel()[:n]
    return (v.astype(np.int8) - 16 * (v >= 8)).astype(np.int8) if signed else v


def _constants(node) -> list:
    out, stack, seen = [], [node], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.get_type_name() == "Constant":
            out.append(n)
        for i in range(n.get_input_size()):
            stack.append(n.input_value(i).get_node())
    return out


def _const_array(c) -> np.ndarray:
    shape = tuple(c.get_output_shape(0))
    n = int(np.prod(shape)) if shape else 1
    t = _etype(c)
    if _INT_TYPES.get(t) == 4:
        return _unpack4(c.get_data(), n, signed=t == "i4").reshape(shape)
    return np.array(c.get_data()).reshape(shape)


def _read(fqn: str, weight_node, out_f: int, in_f: int) -> IRWeight:
    consts = [c for c in _constants(weight_node) if _etype(c) not in ("i64", "i32")]
    ints = [c for c in consts if _etype(c) in _INT_TYPES]
    floats = [c for c in consts if _etype(c) not in _INT_TYPES]
    if not ints:  # a plain FP constant
        big = max(floats, key=lambda c: int(np.prod(c.get_output_shape(0))))
        return IRWeight(fqn, _etype(big), (out_f, in_f), plain=_const_array(big).reshape(out_f, in_f))
    size = lambda c: int(np.prod(c.get_output_shape(0)) if c.get_output_shape(0) else 1)  # noqa: E731
    q_node = max(ints, key=size)
    zp_nodes = [c for c in ints if c is not q_node]
    q = _const_array(q_node).reshape(out_f, in_f)
    scale = _const_array(max(floats, key=size))  # as stored: f16 (NNCF INT4/INT8), f32 (W8A8)
    n_groups = scale.size // out_f
    scales = scale.reshape(out_f, n_groups)
    zeros = None
    if zp_nodes:  # per group, or one scalar when all zero points are equal
        zp = _const_array(zp_nodes[0])
        zeros = zp.reshape(out_f, n_groups) if zp.size == out_f * n_groups else \
            np.full((out_f, n_groups), zp.ravel()[0], dtype=zp.dtype)
    return IRWeight(fqn, _etype(q_node), (out_f, in_f), q=q, scales=scales, zeros=zeros)


def read_ir_weights(xml: str | Path) -> dict[str, IRWeight]:
    """Layer FQN -> IRWeight for every Linear (MatMul) and embedding (Gather) of the IR."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    out: dict[str, IRWeight] = {}
    for op in model.get_ordered_ops():
        m = _LAYER.match(op.get_friendly_name())
        if not m or m.group(1) in out:
            continue
        fqn, kind = m.group(1), m.group(2)
        w = op.input_value(1 if kind == "linear" else 0)
        shape = tuple(w.get_partial_shape().to_shape())
        if len(shape) != 2:
            continue
        out[fqn] = _read(fqn, w.get_node(), *shape)
    return out
