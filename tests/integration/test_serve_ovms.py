"""The OpenVINO Model Server alternative (deploy/ovms/): what can be checked without OVMS or a
Docker engine. config.json is valid and points at the graph; graph.pbtxt parses as protobuf text
format, wires the LLM calculator as OVMS requires, uses only LLMCalculatorOptions fields, and
matches deploy/server.py's engine defaults and limits; an `sqft export` holds every file OVMS
loads."""

import json
import re
from pathlib import Path

import pytest

from deploy.engine import EngineConfig
from deploy.protocol import Limits

OVMS = Path(__file__).resolve().parents[2] / "deploy" / "ovms"
# LLMCalculatorOptions (OVMS src/llm/llm_calculator.proto, 2026 line), scalar fields
LLM_OPTIONS = {"models_path": str, "max_num_batched_tokens": int, "cache_size": int, "max_num_seqs": int,
               "dynamic_split_fuse": bool, "device": str, "plugin_config": str, "best_of_limit": int,
               "max_tokens_limit": int, "enable_prefix_caching": bool, "draft_models_path": str,
               "draft_device": str, "pipeline_type": str, "tool_parser": str, "reasoning_parser": str,
               "enable_tool_guided_generation": bool, "cache_interval_multiplier": int}
_TOKEN = re.compile(r"""\s+|\#[^\n]*|(?P<tok>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""  # space, comment, strings
                    r"""|\[[^\]]*\]|[{}:,]|[^\s{}:,\[\]"'#]+)""")  # [extension], punctuation, words


def parse_text_proto(text: str) -> list[tuple[str, object]]:
    """Protobuf text format as nested lists of (field, value): enough to lint a graph."""
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m, f"cannot tokenize at {text[pos:pos + 30]!r}"
        if m.group("tok"):
            tokens.append(m.group("tok"))
        pos = m.end()

    def message(i: int, closing: str | None) -> tuple[list, int]:
        fields = []
        while i < len(tokens) and tokens[i] != closing:
            name = tokens[i]
            assert re.fullmatch(r"\w+|\[[\w./ ]+\]", name), f"bad field name {name!r}"
            i += 1
            if tokens[i] == ":":
                i += 1
            if tokens[i] == "{":
                value, i = message(i + 1, "}")
                i += 1
            else:
                raw = tokens[i]
                value = (raw[1:-1] if raw[0] in "\"'" else True if raw == "true" else False
                         if raw == "false" else int(raw) if re.fullmatch(r"-?\d+", raw) else raw)
                i += 1
            fields.append((name, value))
            if i < len(tokens) and tokens[i] == ",":
                i += 1
        assert (i < len(tokens)) == (closing is not None), "unbalanced braces"
        return fields, i

    return message(0, None)[0]


def values(fields, name):
    return [v for k, v in fields if k == name]


@pytest.fixture(scope="module")
def graph():
    return parse_text_proto((OVMS / "graph.pbtxt").read_text())


def test_config_points_at_the_graph():
    config = json.loads((OVMS / "config.json").read_text())
    assert set(config) == {"model_config_list"}
    [entry] = config["model_config_list"]
    assert set(entry["config"]) == {"name", "base_path", "graph_path"}
    assert entry["config"]["base_path"] == "/ovms"  # where deploy/README.md mounts deploy/ovms
    assert (OVMS / entry["config"]["graph_path"]).is_file()


def test_graph_wires_the_llm_calculator(graph):
    assert values(graph, "input_stream") == ["HTTP_REQUEST_PAYLOAD:input"]
    assert values(graph, "output_stream") == ["HTTP_RESPONSE_PAYLOAD:output"]
    [node] = values(graph, "node")
    assert values(node, "calculator") == ["HttpLLMCalculator"]
    assert values(node, "input_side_packet") == ["LLM_NODE_RESOURCES:llm"]  # OVMS requires exactly this
    assert sorted(values(node, "input_stream")) == ["HTTP_REQUEST_PAYLOAD:input", "LOOPBACK:loopback"]
    assert sorted(values(node, "output_stream")) == ["HTTP_RESPONSE_PAYLOAD:output", "LOOPBACK:loopback"]
    [info] = values(node, "input_stream_info")
    assert dict(info) == {"tag_index": "LOOPBACK:0", "back_edge": True}


def test_graph_options_are_llm_calculator_fields_matching_our_server(graph):
    [node] = values(graph, "node")
    [node_options] = values(node, "node_options")
    [options] = values(node_options, "[type.googleapis.com / mediapipe.LLMCalculatorOptions]")
    opts = dict(options)
    assert len(opts) == len(options), "a field is set twice"
    for name, value in opts.items():
        assert name in LLM_OPTIONS and isinstance(value, LLM_OPTIONS[name]), (name, value)
    assert opts["models_path"] == "/model" and opts["device"] == "CPU"
    assert isinstance(json.loads(opts["plugin_config"]), dict)
    defaults = EngineConfig()
    assert opts["cache_size"] == defaults.kv_cache_gb
    assert opts["max_num_batched_tokens"] == defaults.max_batched_tokens
    assert opts["max_num_seqs"] == defaults.max_num_seqs
    assert opts["max_tokens_limit"] == Limits().max_new_tokens
    assert opts["enable_prefix_caching"] is False and opts["dynamic_split_fuse"] is True


def test_an_export_holds_what_ovms_loads(tiny_int4_run):
    export = tiny_int4_run[0] / "openvino"
    for name in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml",
                 "openvino_tokenizer.bin", "openvino_detokenizer.xml", "openvino_detokenizer.bin",
                 "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        assert (export / name).is_file(), name
    assert "eos_token_id" in json.loads((export / "generation_config.json").read_text())


def test_parser_rejects_broken_graphs():
    with pytest.raises(AssertionError):
        parse_text_proto('node: { name: "x"')
    with pytest.raises(AssertionError):
        parse_text_proto('node: { name: "x" } }')
