"""`load_jsonl` row validation: every bad row is a ConfigError naming the file and the line.

Regressions: a non-object row (`5`, `null`) raised a TypeError from inside the error handler, a
float `gold` was truncated (1.7 -> 1), a bool `gold` read as 0/1, and a string `choices` was split
into one choice per character.
"""

import gzip
import json
import re

import pytest

from sqft_intel import ConfigError, MCItem, load_jsonl

GOOD = {"query": "Question: which is warmer?\nAnswer:", "choices": ["the sun", "the moon"], "gold": 0}


def _write(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _where(path, line: int) -> str:
    """The message prefix naming the file and the line, as a regex."""
    return re.escape(f"`{path}` line {line}")


def test_valid_rows_round_trip(tmp_path):
    rows = [GOOD,
            {"query": "", "choices": ["a", "b", "c", ""], "gold": 3, "id": "extra keys are fine"},
            {"query": "ünïcode?", "choices": ["日本", "x y"], "gold": 1}]
    path = _write(tmp_path / "ok.jsonl", [json.dumps(rows[0]), "", json.dumps(rows[1]),
                                          "   ", json.dumps(rows[2])])  # blank lines are skipped
    items = load_jsonl(path)
    assert items == [MCItem(r["query"], tuple(r["choices"]), r["gold"]) for r in rows]
    assert [type(it.gold) for it in items] == [int] * 3
    assert [it.answer for it in items] == ["the sun", "", "x y"]
    gz = tmp_path / "ok.jsonl.gz"  # gzip files read the same
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert load_jsonl(gz) == items


@pytest.mark.parametrize("row, words", [
    ("5", r"must be a JSON object .*got 5"),
    ("null", r"must be a JSON object .*got null"),
    ('["q", ["a", "b"], 0]', r"must be a JSON object .*got \[\"q\""),
    ('"a string"', r"must be a JSON object .*got \"a string\""),
    ('{"query": "q", "choices": ["a", "b"]}', r"lacks `gold` \(got keys \['choices', 'query'\]\)"),
    ('{"query": 3, "choices": ["a", "b"], "gold": 0}', r"`query` must be a string, got 3"),
    ('{"query": "q", "choices": "ab", "gold": 1}', r"`choices` must be a list of strings, got \"ab\""),
    ('{"query": "q", "choices": ["a", 2], "gold": 1}', r"`choices` must be a list of strings"),
    ('{"query": "q", "choices": ["a", null], "gold": 1}', r"`choices` must be a list of strings"),
    ('{"query": "q", "choices": ["a"], "gold": 0}', r"holds 1 choice\(s\) \[\"a\"\].*at least 2"),
    ('{"query": "q", "choices": [], "gold": 0}', r"holds 0 choice\(s\).*at least 2"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 1.7}', r"`gold` must be an integer.*got 1\.7"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 1.0}', r"`gold` must be an integer.*got 1\.0"),
    ('{"query": "q", "choices": ["a", "b"], "gold": "1"}', r"`gold` must be an integer.*got \"1\""),
    ('{"query": "q", "choices": ["a", "b"], "gold": true}', r"`gold` must be an integer.*got true"),
    ('{"query": "q", "choices": ["a", "b"], "gold": false}', r"`gold` must be an integer.*got false"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 2}', r"`gold`=2 does not index.*use 0\.\.1"),
    ('{"query": "q", "choices": ["a", "b", "c"], "gold": -1}', r"`gold`=-1 does not index.*use 0\.\.2"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 0', r"is not valid JSON.*one JSON object"),
    ("{'query': 'q'}", r"is not valid JSON"),
    ('{"query": "q"}', r"lacks `choices`, `gold` \(got keys \['query'\]\)"),
])
def test_bad_row_names_file_line_and_value(tmp_path, row, words):
    # the bad row is line 3, after a good row and a blank line: the count includes blank lines
    path = _write(tmp_path / "task.jsonl", [json.dumps(GOOD), "", row, json.dumps(GOOD)])
    with pytest.raises(ConfigError, match=_where(path, 3) + r".*" + words):
        load_jsonl(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.jsonl` does not exist"):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match=r"holds no rows"):
        load_jsonl(_write(tmp_path / "blank.jsonl", ["", "  "]))
