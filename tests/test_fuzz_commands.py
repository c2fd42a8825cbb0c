"""Property-based fuzzing of what arrives on command topics (three targets: any JSON value on
any verb, any bytes on any verb, a valid deployment with one node replaced by anything): whatever the payload, parsing ends
in an ``EdgevaError`` with a code (never another exception, never a crash), a refusal names
where it is, and ``extract_request_id`` never raises (a refusal must still find its reply topic).

``EDGEVA_FUZZ_EXAMPLES`` sets the examples per target (2,000 by default, as CI runs it; a
nightly run sets more).
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeva.modules.registry import load_registry
from edgeva.schemas.commands import extract_request_id, parse_command
from edgeva.schemas.errors import EdgevaError
from edgeva.schemas.graph import validate_graph
from edgeva.schemas.topics import VERBS

EXAMPLES = int(os.environ.get("EDGEVA_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)
# 2000 examples take ~20 s of CPU alone; one core shared with the suite's other workers and
# other load can take minutes: the budget grows, the examples do not shrink
SLOW_CPU = pytest.mark.timeout(600)

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
json_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)), max_leaves=40)

GOOD = {
    "request_id": "r1", "app": "tracking",
    "modules": {
        "decoder": {"type": "decoder", "args": {"source": "synthetic", "fps": 10}, "outputs": ["detector"]},
        "detector": {"type": "detector", "args": {"backend": "opencv-hog"}, "outputs": ["tracker"]},
        "tracker": {"type": "tracker", "args": {"algorithm": "sort"}, "outputs": ["publish"]},
        "publish": {"type": "publish", "args": {}},
    },
}
KEYS = ["request_id", "app", "module", "args", "modules", "type", "outputs", "device", "policy", "source",
        "fps", "backend", "algorithm", "part_of", "coordinator", "hold", "width", "height", "polygons"]


def _refusal_ok(e: EdgevaError) -> None:
    assert e.code and isinstance(e.code, str)
    assert isinstance(str(e), str)


def _parse(verb: str, payload: bytes | str) -> None:
    assert extract_request_id(payload) is None or isinstance(extract_request_id(payload), str)
    try:
        parse_command(verb, payload)
    except EdgevaError as e:
        _refusal_ok(e)


@SLOW_CPU
@FUZZ
@given(verb=st.sampled_from(VERBS), value=json_values)
def test_any_json_value_on_any_command_topic_is_parsed_or_refused(verb, value):
    _parse(verb, json.dumps(value))


@SLOW_CPU
@FUZZ
@given(verb=st.sampled_from(VERBS), raw=st.binary(max_size=200))
def test_any_bytes_on_any_command_topic_are_parsed_or_refused(verb, raw):
    _parse(verb, raw)


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("depth", [100, 1100, 100_000])
def test_deep_nesting_is_refused_not_crashing(verb, depth):
    for payload in ('{"request_id":"n1","a":' + "[" * depth + "1" + "]" * depth + "}",
                    '{"request_id":"n1","a":' + '{"a":' * depth + "1" + "}" * depth + "}"):
        assert extract_request_id(payload) in (None, "n1")
        _parse(verb, payload)


def _mutate(data: dict, path: list, value: object) -> dict:
    """``data`` with the node at ``path`` (keys chosen modulo what exists) replaced by ``value``."""
    data = json.loads(json.dumps(data))
    node = data
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node)[step % len(node)]]
        elif isinstance(node, list) and node:
            node = node[step % len(node)]
        else:
            break
    if isinstance(node, dict):
        key = KEYS[path[-1] % len(KEYS)] if path[-1] % 3 == 0 else (sorted(node) or ["x"])[path[-1] % max(1, len(node))]
        node[key] = value
    elif isinstance(node, list) and node:
        node[path[-1] % len(node)] = value
    return data


REGISTRY = load_registry()


@SLOW_CPU
@FUZZ
@given(path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=5), value=json_values)
def test_a_mutated_deployment_is_valid_or_refused_with_a_path(path, value):
    payload = json.dumps(_mutate(GOOD, path, value))
    try:
        dep = parse_command("deploy", payload)
        validate_graph(dep, REGISTRY, None, "fuzz-device")
    except EdgevaError as e:
        _refusal_ok(e)
        assert e.path is not None or e.code in ("bad_json",), (e.code, str(e), payload)
