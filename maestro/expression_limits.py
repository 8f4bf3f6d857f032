"""Bounded work for CEL expressions: the static limits (source size, depth, worst-case cost)
checked when an expression is compiled, and the bounded inputs that keep the cost estimate true
when it is evaluated.

The `cel` package has no cost or time budget, holds the GIL while it evaluates and is used inside
Temporal workflow code, where no timeout can interrupt it. So the budget is static: every
expression is parsed here into a small AST, and its worst-case cost is estimated from the AST and
the largest inputs it may see: the root variables, cut down to the paths the expression reads,
weigh at most `MAX_INPUT_WEIGHT` together. An expression over `MAX_COST` is refused at
registration; inputs over `MAX_INPUT_WEIGHT` make the evaluation fail at once. Both checks are
deterministic.

Costs are in units of about 0.1 µs, following how the `cel` package works: every value an
operation produces is a fresh copy (selecting a map field copies the field), and `map`/`filter`
copy their accumulated result once per element, so they are quadratic.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

MAX_SOURCE_CHARS = 2_000
MAX_NODES = 500
MAX_DEPTH = 32
MAX_NESTED_MACROS = 2
MAX_COST = 300_000
MAX_INPUT_WEIGHT = 2_048
MAX_PATTERN_CHARS = 256
# A string weighs one unit per this many characters (plus one); every other scalar one unit.
CHARS_PER_UNIT = 64

_COPY = 2  # per weight unit copied, compared or scanned
_TEXT_PER_COPY = 8  # weight units of a string copied for one cost unit
_CONVERT = 40  # per weight unit of the inputs converted into CEL values, once
_ITERATION = 10  # per element a macro visits

_MACROS = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter"})
_SCALAR_FUNCTIONS = frozenset({"size", "int", "uint", "double", "type"})
_CONVERSIONS = frozenset({"string", "bytes", "timestamp", "duration", "dyn"})
_SCANS = frozenset({"contains", "startsWith", "endsWith"})
# Functions Maestro adds (`expressions.FUNCTIONS`; each needs an entry here, or it counts as
# undefined): the growth of the result over the argument, and whether it is a string.
# `shell_quote`: at most 5 characters for each (`'` is `'"'"'`), of text or JSON.
# `max_by`/`min_by`: one element of their list, found in one pass.
_FUNCTIONS = {"shell_quote": (5, True), "max_by": (1, False), "min_by": (1, False)}


class LimitExceeded(ValueError):
    """An expression, or an input it is given, is over a limit."""


@dataclass(frozen=True)
class Analysis:
    """What the limits know of one expression: the worst-case cost of its work (without
    converting its inputs) and, per root variable it reads, the constant paths it reads below
    it (an empty path: the whole root)."""

    work: int
    paths: dict[str, frozenset[tuple[str, ...]]] = field(default_factory=dict)


# -- tokens -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<skip>\s+|//[^\n]*)
    |(?P<str>
        (?:[rR][bB]?|[bB][rR])(?:'''.*?'''|\"\"\".*?\"\"\"|'[^'\n]*'|"[^"\n]*")
        |[bB]?(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
                |'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")
    )
    |(?P<num>0[xX][0-9a-fA-F]+[uU]?|\d*\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+[uU]?)
    |(?P<id>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,()\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)
_LITERAL_WORDS = frozenset({"true", "false", "null"})


def _tokens(source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None:
            raise LimitExceeded(f"unexpected character {source[position]!r} at {position}")
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "skip":
            out.append((kind, match.group()))
    out.append(("end", ""))
    return out


_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-3][0-7]{2}|.)", re.S)
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if len(code) == 1:
        return _SIMPLE_ESCAPES.get(code, code)
    return chr(min(int(code, 8) if code[0].isdigit() else int(code[1:], 16), 0x10FFFF))


def _string_value(literal: str) -> str:
    """The text of a string or bytes literal, its escapes decoded (raw literals keep them)."""
    prefix = len(literal) - len(literal.lstrip("rRbB"))
    quote = 3 if literal[prefix : prefix + 3] in ("'''", '"""') else 1
    body = literal[prefix + quote : len(literal) - quote]
    return body if "r" in literal[:prefix].lower() else _ESCAPE.sub(_unescape, body)


# -- syntax tree --------------------------------------------------------------------------------


@dataclass
class _Node:
    kind: str  # lit, str, list, map, ident, select, index, call, unary, binary, cond
    children: list[_Node]
    value: str = ""  # identifier, field, function or operator name; a string's body
    target: bool = False  # call: the first child is the receiver (`x.f(...)`)
    depth: int = 1

    def __post_init__(self) -> None:
        self.depth = 1 + max((c.depth for c in self.children), default=0)
        if self.depth > MAX_DEPTH:
            raise LimitExceeded(f"the expression nests deeper than {MAX_DEPTH} levels")


_BINARY = [
    ("||",),
    ("&&",),
    ("==", "!=", "<", "<=", ">", ">=", "in"),
    ("+", "-"),
    ("*", "/", "%"),
]


class _Parser:
    """A recursive-descent parser for the CEL grammar; run only on sources `cel` compiled."""

    def __init__(self, source: str) -> None:
        self.tokens = _tokens(source)
        self.at = 0
        self.nodes = 0
        self.nesting = 0

    def parse(self) -> _Node:
        node = self.expr()
        self.expect("end")
        return node

    def make(self, kind: str, children: list[_Node], **extra: Any) -> _Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise LimitExceeded(f"the expression has more than {MAX_NODES} parts")
        return _Node(kind, children, **extra)

    def peek(self) -> str:
        return self.tokens[self.at][1]

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def expect(self, text: str) -> None:
        kind, value = self.take()
        if (value if text != "end" else kind) != text:
            raise LimitExceeded(f"expected {text!r}, found {value!r}")

    def expr(self) -> _Node:
        self.nesting += 1  # bounds the parser's own recursion before the tree is built
        if self.nesting > MAX_DEPTH:
            raise LimitExceeded(f"the expression nests deeper than {MAX_DEPTH} levels")
        condition = self.binary(0)
        if self.peek() == "?":
            self.take()
            then = self.binary(0)
            self.expect(":")
            otherwise = self.expr()
            condition = self.make("cond", [condition, then, otherwise])
        self.nesting -= 1
        return condition

    def binary(self, level: int) -> _Node:
        if level == len(_BINARY):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek() in _BINARY[level]:
            op = self.take()[1]
            left = self.make("binary", [left, self.binary(level + 1)], value=op)
        return left

    def unary(self) -> _Node:
        ops = []
        while self.peek() in ("!", "-"):
            ops.append(self.take()[1])
        node = self.member()
        for op in reversed(ops):
            node = self.make("unary", [node], value=op)
        return node

    def member(self) -> _Node:
        node = self.primary()
        while self.peek() in (".", "["):
            if self.take()[1] == ".":
                name = self.take()[1]
                if self.peek() == "(":
                    self.take()
                    node = self.make("call", [node, *self.items(")")], value=name, target=True)
                else:
                    node = self.make("select", [node], value=name)
            else:
                index = self.expr()
                self.expect("]")
                node = self.make("index", [node, index])
        return node

    def items(self, close: str) -> list[_Node]:
        out: list[_Node] = []
        while self.peek() != close:
            out.append(self.expr())
            if self.peek() == ",":
                self.take()
        self.take()
        return out

    def primary(self) -> _Node:
        kind, text = self.take()
        if kind == "str":
            return self.make("str", [], value=_string_value(text))
        if kind == "num" or text in _LITERAL_WORDS:
            return self.make("lit", [])
        if text == "(":
            node = self.expr()
            self.expect(")")
            return node
        if text == "[":
            return self.make("list", self.items("]"))
        if text == "{":
            return self.make("map", self.entries())
        if text == ".":  # a name from the root scope: `.params`
            kind, text = self.take()
        if kind != "id":
            raise LimitExceeded(f"unexpected {text!r}")
        if self.peek() == "(":
            self.take()
            return self.make("call", self.items(")"), value=text)
        if self.peek() == "{":  # a message literal: `Name{field: value}`
            self.take()
            return self.make("map", self.entries(fields=True))
        return self.make("ident", [], value=text)

    def entries(self, fields: bool = False) -> list[_Node]:
        out: list[_Node] = []
        while self.peek() != "}":
            if fields:  # a field name
                self.take()
                out.append(self.make("lit", []))
            else:
                out.append(self.expr())
            self.expect(":")
            out.append(self.expr())
            if self.peek() == ",":
                self.take()
        self.take()
        return out


def _walk(node: _Node) -> Iterator[_Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


# -- paths read below each root -----------------------------------------------------------------


def _root_paths(node: _Node, roots: frozenset[str]) -> dict[str, set[tuple[str, ...]]]:
    """Per root: the constant paths the expression reads (`signal.params.dt` -> params, dt).
    A comprehension variable shadows a root of the same name inside its macro."""
    found: dict[str, set[tuple[str, ...]]] = {}

    def visit(node: _Node, bound: frozenset[str]) -> None:
        chain = []  # the selects and indexes above the chain's head, outermost first
        head = node
        while head.kind in ("select", "index"):
            chain.append(head)
            head = head.children[0]
        for link in chain:
            if link.kind == "index":
                visit(link.children[1], bound)
        if head.kind == "ident":
            if head.value in roots and head.value not in bound:
                path = []
                for link in reversed(chain):
                    key = link.value if link.kind == "select" else _constant_key(link)
                    if key is None:
                        break
                    path.append(key)
                found.setdefault(head.value, set()).add(tuple(path))
        elif head.kind == "call" and head.target and head.value in _MACROS and _macro_var(head):
            visit(head.children[0], bound)
            for child in head.children[2:]:
                visit(child, bound | {head.children[1].value})
        else:
            for child in head.children:
                visit(child, bound)

    visit(node, frozenset())
    return found


def _constant_key(index: _Node) -> str | None:
    key = index.children[1]
    return key.value if key.kind == "str" else None


def _macro_var(node: _Node) -> bool:
    return len(node.children) in (3, 4) and node.children[1].kind == "ident"


# -- cost ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cost:
    cost: int
    size: int  # the value's weight, at most
    count: int  # the elements of a list or map, at most
    text: bool = False  # certainly a string or bytes: copied in bulk, far cheaper per unit


_SCALAR = _Cost(1, 1, 1)


def _copy(value_size: int, text: bool) -> int:
    return value_size // _TEXT_PER_COPY + 1 if text else _COPY * value_size


def _weight_of_string(text: str) -> int:
    return 1 + len(text) // CHARS_PER_UNIT


class _Estimator:
    """Worst-case cost by abstract interpretation: every cost and size is a polynomial with
    non-negative coefficients in the sizes of the comprehension variables, so a macro's total
    over its elements is bounded by `n * f(0) + f(s) - f(0)` (f evaluated at an empty element
    and at the whole range of size s).

    The inputs an expression reads weigh at most `MAX_INPUT_WEIGHT` together. With `active`
    None, every input path read counts that much (always sound). With `active` a set of
    related paths (one path and those it contains or is contained in), those count that much
    and every other path one unit: when the cost is linear in the input sizes, its maximum is
    the largest of these estimates."""

    def __init__(
        self, roots: frozenset[str], active: frozenset[tuple[str, ...]] | None = None
    ) -> None:
        self.roots = roots
        self.active = active

    def input_size(self, path: tuple[str, ...]) -> int:
        """The weight of the input at `path` (the root variable first), at most."""
        if self.active is None or any(_related(path, p) for p in self.active):
            return MAX_INPUT_WEIGHT
        return 1

    def input_path(self, node: _Node, env: dict[str, tuple[int, int]]) -> tuple[str, ...] | None:
        """The input path a chain of selects and constant indexes reads from a root."""
        keys: list[str] = []
        while node.kind in ("select", "index"):
            key = node.value if node.kind == "select" else _constant_key(node)
            if key is None:
                return None
            keys.append(key)
            node = node.children[0]
        if node.kind == "ident" and node.value in self.roots and node.value not in env:
            return (node.value, *reversed(keys))
        return None

    def cost(self, node: _Node, env: dict[str, tuple[int, int]], nested: int) -> _Cost:
        kids = node.children
        match node.kind:
            case "lit":
                return _SCALAR
            case "str":
                weight = _weight_of_string(node.value)
                return _Cost(_copy(weight, True), weight, weight, True)
            case "ident":
                if node.value in env:
                    size, count = env[node.value]
                    return _Cost(_COPY * size + 1, size, count)
                if node.value in self.roots:
                    size = self.input_size((node.value,))
                    return _Cost(1, size, size)
                return _SCALAR  # a type name such as `int`
            case "list" | "map":
                parts = [self.cost(k, env, nested) for k in kids]
                size = 1 + sum(p.size for p in parts)
                count = len(parts) if node.kind == "list" else len(parts) // 2
                return _Cost(sum(p.cost for p in parts) + _COPY * size, size, count)
            case "select" | "index":
                # The value selected is copied: an input's own size, or its container's at most.
                inner = self.cost(kids[0], env, nested)
                key = self.cost(kids[1], env, nested) if node.kind == "index" else _SCALAR
                path = self.input_path(node, env)
                size = inner.size if path is None else self.input_size(path)
                cost = inner.cost + key.cost + _COPY * (size + key.size) + 1
                return _Cost(cost, size, size)
            case "unary":
                return _Cost(self.cost(kids[0], env, nested).cost + 1, 1, 1)
            case "cond":
                test, then, otherwise = (self.cost(k, env, nested) for k in kids)
                size = then.size + otherwise.size
                cost = test.cost + then.cost + otherwise.cost + 1
                text = then.text and otherwise.text
                return _Cost(cost, size, then.count + otherwise.count, text)
            case "binary":
                return self.binary(node, env, nested)
            case "call":
                return self.call(node, env, nested)
        raise LimitExceeded(f"unknown expression part {node.kind!r}")

    def binary(self, node: _Node, env: dict[str, tuple[int, int]], nested: int) -> _Cost:
        left, right = (self.cost(k, env, nested) for k in node.children)
        base = left.cost + right.cost + 1
        match node.value:
            case "+":  # numbers, or a new string, bytes or list holding both sides
                size = left.size + right.size
                text = left.text or right.text  # CEL adds a string only to a string
                return _Cost(base + _copy(size, text), size, left.count + right.count, text)
            case "==" | "!=" | "<" | "<=" | ">" | ">=":
                # A comparison stops at the shorter side; a side without variables is constant.
                constant = [
                    c
                    for n, c in zip(node.children, (left, right), strict=True)
                    if not _has_ident(n)
                ]
                scanned = constant[0].size if constant else left.size + right.size
                return _Cost(base + _COPY * scanned, 1, 1)
            case "in":
                return _Cost(base + _COPY * (left.size + right.size), 1, 1)
        return _Cost(base, 1, 1)  # && || - * / %

    def call(self, node: _Node, env: dict[str, tuple[int, int]], nested: int) -> _Cost:
        name, kids = node.value, node.children
        if node.target and name in _MACROS and _macro_var(node):
            return self.macro(node, env, nested)
        if name == "has":
            return _Cost(self.cost(kids[0], env, nested).cost + 1, 1, 1)
        args = [self.cost(k, env, nested) for k in kids]
        spent = sum(a.cost for a in args) + 1
        sizes = sum(a.size for a in args)
        if name == "matches":
            pattern = kids[-1]
            if pattern.kind != "str":
                raise LimitExceeded("matches() needs a literal pattern, so its cost is known")
            positions, compiled = pattern_states(pattern.value)
            return _Cost(spent + 2 * compiled + args[0].size * positions, 1, 1)
        if name in _SCANS:
            return _Cost(spent + _COPY * sizes, 1, 1)
        if name in _SCALAR_FUNCTIONS or name.startswith("get"):
            return _Cost(spent, 1, 1)
        if name in _CONVERSIONS:
            text = name in ("string", "bytes")
            return _Cost(spent + _COPY * sizes, sizes + 1, sizes + 1, text)
        if name in _FUNCTIONS:  # a Python callback: its arguments are converted to Python
            growth, text = _FUNCTIONS[name]
            size = growth * sizes + 1
            return _Cost(spent + _CONVERT * sizes + _copy(size, text), size, size, text)
        return _Cost(spent, 1, 1)  # undefined: evaluating it is an error, after its arguments

    def macro(self, node: _Node, env: dict[str, tuple[int, int]], nested: int) -> _Cost:
        if nested >= MAX_NESTED_MACROS:
            raise LimitExceeded(
                f"macros ({', '.join(sorted(_MACROS - {'existsOne'}))}) nest at most "
                f"{MAX_NESTED_MACROS} deep"
            )
        source, var, *body = node.children
        seq = self.cost(source, env, nested)
        n = seq.count
        spent = seq.cost + _ITERATION * n
        for part in body:  # the predicate and/or the transform, once per element
            empty = self.cost(part, {**env, var.value: (0, 0)}, nested + 1)
            whole = self.cost(part, {**env, var.value: (seq.size, seq.size)}, nested + 1)
            spent += n * empty.cost + whole.cost - empty.cost
        if node.value == "map":
            # The result is copied once per element while it grows.
            size = 1 + n * (empty.size + 1) + whole.size - empty.size
            return _Cost(spent + _COPY * n * size, size, n)
        if node.value == "filter":
            return _Cost(spent + _COPY * n * seq.size, seq.size, n)
        return _Cost(spent, 1, 1)


def _has_ident(node: _Node) -> bool:
    return any(n.kind == "ident" for n in _walk(node))


# Automaton states a class compiles to, about: Unicode word and property classes are large.
_BIG_CLASSES, _BIG_CLASS = "wWpP", 3_000
_SMALL_CLASSES, _CLASS = "dDsS", 64


def pattern_states(pattern: str) -> tuple[int, int]:
    """Bounds on a regular expression's size: `(positions, compiled)`. Positions count atoms,
    with counted repetitions (`x{100}`) multiplying what they repeat; matching is linear in the
    text times this. Compiled also weighs each class by the automaton it compiles to (Unicode
    `\\w` and `\\p{..}` are large); compiling is linear in it."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise LimitExceeded(f"a matches() pattern is longer than {MAX_PATTERN_CHARS} characters")
    groups = [[0, 0, 0, 0]]  # per open group: positions, compiled, and those of the last atom
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        atom = (1, 1)
        if ch == "\\":
            letter = pattern[i + 1 : i + 2]
            if letter and letter in _BIG_CLASSES:
                atom = (1, _BIG_CLASS)
            elif letter and letter in _SMALL_CLASSES:
                atom = (1, _CLASS)
            i += 2
            if letter in ("p", "P") and pattern[i : i + 1] == "{":
                i = pattern.find("}", i) + 1 or len(pattern)
        elif ch == "[":
            j = i + 1 + (pattern[i + 1 : i + 2] == "^")
            j += pattern[j : j + 1] == "]"
            compiled = _CLASS
            while j < len(pattern) and pattern[j] != "]":
                if pattern[j] == "\\" and pattern[j + 1 : j + 2] in tuple(_BIG_CLASSES):
                    compiled += _BIG_CLASS
                j += 2 if pattern[j] == "\\" else 1
            atom, i = (1, compiled), j + 1
        elif ch == "(":
            groups.append([0, 0, 0, 0])
            i += 1
            continue
        elif ch == ")" and len(groups) > 1:
            inner = groups.pop()
            atom = (max(1, inner[0]), max(1, inner[1]))
            i += 1
        elif ch in "*+?":
            i += 1
            continue
        elif ch == "{" and (counted := re.match(r"\{(\d+)(,(\d*))?\}", pattern[i:])):
            low, comma, high = int(counted.group(1)), counted.group(2), counted.group(3)
            times = max(1, int(high) if high else low + 1 if comma else low)
            group = groups[-1]
            group[0] += group[2] * (times - 1)
            group[1] += group[3] * (times - 1)
            group[2] *= times
            group[3] *= times
            i += counted.end()
            continue
        else:
            atom = (1, _CLASS if ch == "." else 1 if ch.isascii() else 4)
            i += 1
        group = groups[-1]
        group[0] += atom[0]
        group[1] += atom[1]
        group[2], group[3] = atom
    return max(1, sum(g[0] for g in groups)), max(1, sum(g[1] for g in groups))


# -- the checks ---------------------------------------------------------------------------------


def check_source(source: str) -> None:
    """Refuse a source over `MAX_SOURCE_CHARS` before anything parses it."""
    if len(source) > MAX_SOURCE_CHARS:
        raise LimitExceeded(
            f"the expression is {len(source)} characters long; the limit is {MAX_SOURCE_CHARS}"
        )


@lru_cache(maxsize=4096)
def analyze(source: str, roots: frozenset[str]) -> Analysis:
    """Parse a source `cel` compiled and estimate the worst-case cost of its work; raise
    LimitExceeded if it is too long, too deep or too big to estimate."""
    check_source(source)
    tree = _Parser(source).parse()
    paths = {name: frozenset(p) for name, p in _root_paths(tree, roots).items()}
    read = [(name, *p) for name, found in paths.items() for p in found]
    if not read or _multiplies_inputs(tree, roots):
        work = _Estimator(roots).cost(tree, {}, 0).cost
    else:
        work = max(
            _Estimator(roots, group).cost(tree, {}, 0).cost for group in _related_groups(read)
        )
    return Analysis(work, paths)


def _related(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return a[: len(b)] == b or b[: len(a)] == a


def _related_groups(paths: list[tuple[str, ...]]) -> list[frozenset[tuple[str, ...]]]:
    """The paths, grouped by the relation "one contains the other", transitively."""
    groups: list[set[tuple[str, ...]]] = []
    for path in paths:
        joined = {path}
        for group in [g for g in groups if any(_related(path, p) for p in g)]:
            groups.remove(group)
            joined |= group
        groups.append(joined)
    return [frozenset(g) for g in groups]


def _multiplies_inputs(tree: _Node, roots: frozenset[str]) -> bool:
    """Whether a macro iterates over an input and reads an input per element: then the cost
    may grow with the product of two input sizes, and only the all-inputs estimate is sound."""

    def reads_root(node: _Node, bound: frozenset[str]) -> bool:
        if node.kind == "ident":
            return node.value in roots and node.value not in bound
        if node.kind == "call" and node.target and node.value in _MACROS and _macro_var(node):
            inner = bound | {node.children[1].value}
            return reads_root(node.children[0], bound) or any(
                reads_root(k, inner) for k in node.children[2:]
            )
        return any(reads_root(k, bound) for k in node.children)

    for node in _walk(tree):
        if node.kind == "call" and node.target and node.value in _MACROS and _macro_var(node):
            body_reads = any(reads_root(k, frozenset()) for k in node.children[2:])
            if body_reads and reads_root(node.children[0], frozenset()):
                return True
    return False


def check_total(analyses: list[Analysis]) -> int:
    """The worst-case cost of evaluating expressions together (their inputs are converted
    once); raise LimitExceeded if it is over `MAX_COST`."""
    reads = any(a.paths for a in analyses)
    cost = sum(a.work for a in analyses) + _CONVERT * MAX_INPUT_WEIGHT * reads
    if cost > MAX_COST:
        what = "the expression" if len(analyses) == 1 else f"{len(analyses)} expressions together"
        raise LimitExceeded(
            f"{what} may cost up to {cost:,} units to evaluate; the limit is {MAX_COST:,} "
            f"(the inputs count as up to {MAX_INPUT_WEIGHT:,} units; macros over lists, "
            "string concatenation and matches() multiply)"
        )
    return cost


def bounded_inputs(
    analyses: list[Analysis], context: dict[str, Any], limit: int = MAX_INPUT_WEIGHT
) -> dict[str, Any]:
    """The root variables cut down to the paths the expressions read; raise LimitExceeded if
    together they weigh more than `limit` (`MAX_INPUT_WEIGHT` but for a foreach's `outputs`,
    whose input grows with its items). Roots none of them reads are empty."""
    paths: dict[str, set[tuple[str, ...]]] = {}
    for analysis in analyses:
        for name, read in analysis.paths.items():
            paths.setdefault(name, set()).update(read)
    out: dict[str, Any] = {name: {} for name in context}
    total = 0
    for name in sorted(paths):
        out[name] = _prune(context.get(name, {}), frozenset(paths[name]))
        total += input_weight(out[name], limit - total)
        if total > limit:
            raise LimitExceeded(
                f"the values read from {', '.join(f'`{n}`' for n in sorted(paths))} are too "
                f"large: over {limit:,} units (a list or map item, or "
                f"{CHARS_PER_UNIT} characters of a string, count one each)"
            )
    return out


def _prune(value: Any, paths: frozenset[tuple[str, ...]]) -> Any:
    if () in paths or not isinstance(value, dict):
        return value
    heads: dict[str, set[tuple[str, ...]]] = {}
    for path in paths:
        heads.setdefault(path[0], set()).add(path[1:])
    return {key: _prune(value[key], frozenset(rest)) for key, rest in heads.items() if key in value}


def input_weight(value: Any, limit: int) -> int:
    """The weight of a JSON-like value, counted until it passes `limit`; nesting deeper than
    `MAX_DEPTH` counts as over the limit."""
    total = 0
    stack = [(value, 0)]
    while stack and total <= limit:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return limit + 1
        if isinstance(item, str | bytes):
            total += 1 + len(item) // CHARS_PER_UNIT
        elif isinstance(item, dict):
            total += 1
            stack.extend((part, depth + 1) for kv in item.items() for part in kv)
        elif isinstance(item, list | tuple):
            total += 1
            stack.extend((part, depth + 1) for part in item)
        else:
            total += 1
    return total
