"""Property tests (hypothesis): untrusted input meets our parsers and only ever gets our errors.

The server's request parser and the recipe loader must either accept an input, with every limit
holding, or raise their own typed error; never a KeyError/TypeError from deep inside.
"""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.protocol import Limits, RequestError, parse_request
from sqft_intel import ConfigError
from sqft_intel.recipe import SECTIONS, build_recipe, parse_set

LIMITS = Limits(max_body_bytes=4096, max_prompt_chars=200, max_new_tokens=32, max_messages=4)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "bot", 3]),
                                           "content": st.one_of(st.text(max_size=80), st.integers())}),
                    max_size=6)
request_like = st.fixed_dictionaries({}, optional={
    "prompt": st.one_of(st.text(max_size=300), st.lists(st.text(max_size=20), max_size=2), scalars),
    "messages": st.one_of(messages, scalars),
    "max_tokens": st.one_of(st.integers(-5, 100), scalars),
    "stream": scalars, "model": scalars})


def _check(kind: str, body: bytes) -> None:
    try:
        req = parse_request(kind, body, LIMITS)
    except RequestError as e:
        assert 400 <= e.status < 500 and e.message
        assert json.loads(e.body())["error"]["code"] == e.status
        return
    assert 1 <= req.max_tokens <= LIMITS.max_new_tokens and isinstance(req.stream, bool)
    if kind == "completion":
        assert isinstance(req.prompt, str) and 0 < len(req.prompt) <= LIMITS.max_prompt_chars
    else:
        assert 0 < len(req.messages) <= LIMITS.max_messages
        assert sum(len(c) for _, c in req.messages) <= LIMITS.max_prompt_chars


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["completion", "chat"]), body=st.binary(max_size=600))
def test_request_parser_on_arbitrary_bytes(kind, body):
    _check(kind, body)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["completion", "chat"]), data=st.one_of(request_like, json_values))
def test_request_parser_on_json_shaped_input(kind, data):
    _check(kind, json.dumps(data).encode())


section_names = st.one_of(st.sampled_from(list(SECTIONS)), st.text(max_size=10))
key_names = st.one_of(st.sampled_from(["sparsity", "nm", "steps", "lr", "mode", "rank_space",
                                       "group_size", "bits", "format", "items", "strategy",
                                       "ranks", "method", "target_modules", "sym"]), st.text(max_size=10))


@settings(max_examples=300, deadline=None)
@given(recipe=st.dictionaries(section_names, st.one_of(
    st.dictionaries(key_names, json_values, max_size=3), scalars), max_size=3))
def test_recipe_builder_raises_only_config_errors(recipe):
    try:
        r = build_recipe(recipe)
    except ConfigError as e:
        assert str(e)
        return
    assert r.raw.keys() == SECTIONS.keys()


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.text(max_size=40), max_size=3))
def test_set_overrides_raise_only_config_errors(items):
    try:
        build_recipe(parse_set(items))
    except ConfigError as e:
        assert str(e)
