"""DAG helpers: cycle detection, a stable topological order and a node's descendants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as a closed path (`a -> b -> a`), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in edges.get(node, ()):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and dep in edges:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def topological_order(edges: Mapping[str, Sequence[str]]) -> list[str]:
    """Nodes so that each comes after its dependencies; ties keep declaration order."""
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(edges)
    while remaining:
        ready = [n for n in remaining if all(d in placed for d in edges[n])]
        if not ready:
            raise ValueError(f"dependency cycle: {' -> '.join(find_cycle(edges) or remaining)}")
        for node in ready:
            order.append(node)
            placed.add(node)
        remaining = [n for n in remaining if n not in placed]
    return order


def descendants(edges: Mapping[str, Sequence[str]], node: str) -> set[str]:
    """`node` and every node that depends on it, directly or through others."""
    found = {node}
    changed = True
    while changed:
        changed = False
        for other, deps in edges.items():
            if other not in found and found.intersection(deps):
                found.add(other)
                changed = True
    return found
