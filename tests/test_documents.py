"""Unit tests for bounded JSON and YAML decoding: depth, aliases and alias expansion."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from maestro.documents import (
    MAX_DEPTH,
    DocumentTooComplex,
    json_too_deep,
    load_json,
    load_yaml,
)


def billion_laughs(levels: int = 9) -> str:
    """Nine aliases per level: 9 ** levels strings from a few hundred bytes."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        refs = ",".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_billion_laughs_is_refused_fast():
    document = billion_laughs()
    assert len(document) < 500
    started = time.perf_counter()
    with pytest.raises(DocumentTooComplex, match="expand the document to more than 100,000"):
        load_yaml(document)
    assert time.perf_counter() - started < 0.5


def test_too_many_aliases_are_refused_even_when_small():
    document = "a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n"
    with pytest.raises(DocumentTooComplex, match="more than 100 aliases"):
        load_yaml(document)


def test_a_few_aliases_and_merge_keys_still_work():
    document = "base: &b {x: 1}\nv1: *b\nv2: {<<: *b, y: 2}\nlist: [&i 3, *i, *i]\n"
    assert load_yaml(document) == {
        "base": {"x": 1},
        "v1": {"x": 1},
        "v2": {"x": 1, "y": 2},
        "list": [3, 3, 3],
    }


@pytest.mark.parametrize("document", ["a: &a [*a]", "&a {x: *a}"])
def test_recursive_aliases_are_refused(document):
    with pytest.raises(DocumentTooComplex, match="refers to a node that contains it"):
        load_yaml(document)


@pytest.mark.parametrize("load", [load_json, load_yaml])
def test_depth_limit_applies_to_json_and_yaml(load):
    assert load(nested(MAX_DEPTH)) is not None
    for depth in (MAX_DEPTH + 1, 1_000):
        with pytest.raises(DocumentTooComplex, match="nests deeper than 64 levels"):
            load(nested(depth))


def test_depth_counts_through_aliases_and_block_style():
    deep = "a: &deep " + nested(40) + "\nb: " + "[" * 30 + "*deep" + "]" * 30 + "\n"
    with pytest.raises(DocumentTooComplex, match="deeper than 64"):
        load_yaml(deep)
    block = "".join("  " * i + "k:\n" for i in range(70)) + "  " * 70 + "v: 1\n"
    with pytest.raises(DocumentTooComplex, match="deeper than 64"):
        load_yaml(block)


def test_yaml_that_is_not_yaml_is_a_yaml_error():
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: [1, 2\nb: }")
    with pytest.raises(yaml.YAMLError):
        load_yaml(nested(100_000))  # libyaml's own nesting limit


@pytest.mark.parametrize(
    ("raw", "limit", "deep"),
    [
        (b'["[[[[[[", {"a": "}}}}{{{{"}}]', 3, False),
        (b'["\\\\", [[[]]]]', 3, True),  # an escaped backslash ends the string
        (b'["\\\\\\"[[[[[[", [[]]]', 3, False),  # an escaped quote does not
        (b"[" + b"[]," * 100_000 + b"[]]", 2, False),
        (b"[" * 70_000 + b"]" * 70_000, 64, True),
        (b"[]" * 32_750 + b"[" * 65 + b"]" * 65, 64, True),  # across a chunk boundary
        (b"[]" * 32_750 + b"[" * 64 + b"]" * 64, 64, False),
        (b"not json at all", 1, False),
    ],
)
def test_json_depth_from_brackets(raw, limit, deep):
    assert json_too_deep(raw, limit) is deep


def test_big_flat_documents_load():
    document = json.dumps([{"a": [1, 2]}] * 20_000)
    assert len(load_json(document)) == 20_000
    assert len(load_yaml(document)) == 20_000
