"""A layered left-to-right layout of a small directed graph (a run's DAG, a lineage), computed
here and drawn as SVG by the templates: no layout library in the browser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

NODE_WIDTH = 180
NODE_HEIGHT = 48
GAP_X = 60
GAP_Y = 18
MARGIN = 8
LABEL_CHARS = 24


@dataclass
class Node:
    """A box: its label, a second line (the status in words), a link and a CSS class."""

    id: str
    label: str
    detail: str = ""
    href: str | None = None
    css: str = ""
    title: str = ""
    x: int = 0
    y: int = 0
    parents: list[str] = field(default_factory=list)

    @property
    def short_label(self) -> str:
        if len(self.label) <= LABEL_CHARS:
            return self.label
        return self.label[: LABEL_CHARS - 1] + "…"


@dataclass
class Edge:
    source: str
    target: str
    path: str = ""


@dataclass
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int
    node_width: int = NODE_WIDTH
    node_height: int = NODE_HEIGHT


def layout(nodes: Sequence[Node], edges: Sequence[tuple[str, str]]) -> Graph:
    """Place `nodes` in layers (each after all its parents: longest path), order each layer by
    its parents' mean position, and route each edge as a curve between the boxes."""
    by_id = {node.id: node for node in nodes}
    kept = [(s, t) for s, t in dict.fromkeys(edges) if s in by_id and t in by_id and s != t]
    for node in nodes:
        node.parents = []
    for source, target in kept:
        by_id[target].parents.append(source)
    layer = _layers(list(by_id), kept)
    columns: dict[int, list[Node]] = {}
    for node in nodes:
        columns.setdefault(layer[node.id], []).append(node)
    rank: dict[str, float] = {}
    for index in sorted(columns):
        column = columns[index]
        if index:
            order = {n.id: i for i, n in enumerate(column)}

            def key(node: Node, order: dict[str, int] = order) -> tuple[float, int]:
                placed = [rank[p] for p in node.parents if p in rank]
                return (sum(placed) / len(placed) if placed else order[node.id], order[node.id])

            column.sort(key=key)
        for row, node in enumerate(column):
            rank[node.id] = row
            node.x = MARGIN + index * (NODE_WIDTH + GAP_X)
            node.y = MARGIN + row * (NODE_HEIGHT + GAP_Y)
    out = []
    for source, target in kept:
        a, b = by_id[source], by_id[target]
        x1, y1 = a.x + NODE_WIDTH, a.y + NODE_HEIGHT // 2
        x2, y2 = b.x, b.y + NODE_HEIGHT // 2
        bend = max(GAP_X // 2, (x2 - x1) // 2)
        path = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
        out.append(Edge(source, target, path))
    width = max((n.x + NODE_WIDTH for n in nodes), default=0) + MARGIN
    height = max((n.y + NODE_HEIGHT for n in nodes), default=0) + MARGIN
    return Graph(list(nodes), out, width, height)


def _layers(ids: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Longest path from the sources (Kahn's order); nodes on a cycle go after the rest."""
    children: dict[str, list[str]] = {i: [] for i in ids}
    indegree = dict.fromkeys(ids, 0)
    for source, target in edges:
        children[source].append(target)
        indegree[target] += 1
    layer = dict.fromkeys(ids, 0)
    ready = [i for i in ids if indegree[i] == 0]
    seen = 0
    while ready:
        current = ready.pop(0)
        seen += 1
        for child in children[current]:
            layer[child] = max(layer[child], layer[current] + 1)
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if seen < len(ids):
        last = max(layer.values(), default=0) + 1
        for i in ids:
            if indegree[i] > 0:
                layer[i] = last
    return layer
