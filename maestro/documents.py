"""Bounded decoding of JSON and YAML documents: nesting depth, YAML aliases and the size aliases
expand a YAML document to are limited, so a small document can never cost a lot to load."""

from __future__ import annotations

import json
from array import array
from itertools import accumulate
from typing import Any

import yaml

MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_EXPANDED_NODES = 100_000

_NOT_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"')
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes
_CHUNK = 65_536  # brackets per call into C, so a thread running this lets others run between

_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DocumentTooComplex(ValueError):
    """A document is nested too deeply, or its YAML aliases are too many or expand too far."""


def json_too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects deeper than `limit`, from its brackets alone
    (outside strings), before anything parses it. Linear, in a few passes of C code."""
    if b"\\" in raw:  # only escaped quotes and backslashes matter for finding strings
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = raw.translate(None, _NOT_STRUCTURE)  # brackets and quotes
    brackets = b"".join(structure.split(b'"')[::2]) if b'"' in structure else structure
    depth = 0
    for start in range(0, len(brackets), _CHUNK):
        chunk = brackets[start : start + _CHUNK]
        if len(chunk) > limit - depth:  # else it cannot reach past the limit
            steps = array("b", chunk.translate(_STEPS))
            if max(accumulate(steps, initial=depth)) > limit:
                return True
            depth += sum(steps)
        else:
            depth += 2 * (chunk.count(b"[") + chunk.count(b"{")) - len(chunk)
    return False


def load_json(raw: bytes | str) -> Any:
    """Decode JSON, refusing documents nested deeper than `MAX_DEPTH` (ValueError if it is not
    JSON)."""
    data = raw.encode() if isinstance(raw, str) else raw
    if json_too_deep(data):
        raise DocumentTooComplex(f"the document nests deeper than {MAX_DEPTH} levels")
    return json.loads(data)


def load_yaml(raw: bytes | str) -> Any:
    """Decode YAML with the safe loader, refusing documents nested deeper than `MAX_DEPTH`,
    with more than `MAX_ALIASES` aliases, with recursive aliases, or that aliases expand to more
    than `MAX_EXPANDED_NODES` nodes (yaml.YAMLError if it is not YAML)."""
    loader = _SafeLoader(raw)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    except RecursionError:  # the pure-Python composer, on a document libyaml would refuse
        raise DocumentTooComplex(f"the document nests deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node) -> None:
    """Measure the composed node graph, where an alias is one more reference to a node: the
    depth of its collections and its size with aliases followed, measuring each node once."""
    measured: dict[int, tuple[int, int]] = {}  # id -> (depth, expanded size)
    open_nodes: set[int] = set()  # the path from the root to the node being measured
    seen: set[int] = {id(root)}
    aliases = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, kids_measured = stack.pop()
        key = id(node)
        kids = _children(node)
        if kids_measured:
            open_nodes.discard(key)
            parts = [measured[id(kid)] for kid in kids]
            depth = isinstance(node, yaml.CollectionNode) + max((d for d, _ in parts), default=0)
            size = 1 + sum(s for _, s in parts)
            if depth > MAX_DEPTH:
                raise DocumentTooComplex(f"the document nests deeper than {MAX_DEPTH} levels")
            if size > MAX_EXPANDED_NODES and aliases:
                raise DocumentTooComplex(
                    f"YAML aliases expand the document to more than {MAX_EXPANDED_NODES:,} nodes"
                )
            measured[key] = (depth, size)
            continue
        if key in measured:  # reached again through an alias, and measured meanwhile
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for kid in kids:
            if id(kid) in open_nodes:
                raise DocumentTooComplex("a YAML alias refers to a node that contains it")
            if id(kid) in seen:
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise DocumentTooComplex(f"the document uses more than {MAX_ALIASES} aliases")
            seen.add(id(kid))
            if id(kid) not in measured:
                stack.append((kid, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
