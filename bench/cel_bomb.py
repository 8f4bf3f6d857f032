"""Bounded work per request: the worst expressions the limits accept, and `/healthz` while
clients publish signals that hit them.

    python -m bench.cel_bomb [--seconds 30] [--clients 4] [--only PHASES] [--offline] [--out FILE]

First, in this process: each kind of expensive expression at the edge of the limits (the
largest variant `compile_expression` accepts), evaluated over inputs at the edge of theirs;
CPU and wall time, best of five. Then, against `maestro up` (a real API process), `/healthz`
latency probed every 50 ms in four phases: `idle`; `worst_when`, while `--clients` clients
publish signals that hit a trigger whose `when` is the costliest accepted; `over_input`, while
they publish signals whose payload is over the expression input limit (each records
`condition_error`); `documents`, while they post bomb documents (YAML alias bomb, 1,000-deep
JSON) and a valid 300 KB YAML definition to `/workflows/validate`. It also records how
registration answers the original bombs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.run import Api, machine, source, summary_ms
from bench.stack import Stack
from maestro import expression_limits
from maestro.expressions import RUN_ROOTS, TRIGGER_ROOTS, ExpressionError, compile_expression
from maestro.expressions import evaluate as evaluate_expression

TARGET_P99_MS = 100.0
PROBE_INTERVAL = 0.05

# Inputs at the edge of the expression input limit.
_WEIGHT = expression_limits.MAX_INPUT_WEIGHT - 8
_STRINGS = [f"s{i}" for i in range(_WEIGHT - 1)]
_MAP = {f"k{i}": "v" for i in range((_WEIGHT - 1) // 2)}
_TEXT = "a" * ((_WEIGHT - 1) * expression_limits.CHARS_PER_UNIT)
_INPUTS = {"params": {"l": _STRINGS, "m": _MAP, "s": _TEXT, "i": list(range(_WEIGHT - 1))}}
_QUARTER = {"l": _STRINGS[: _WEIGHT // 4 - 8]}


def _items(k: int) -> str:
    return "[" + ", ".join(map(str, range(k))) + "]"


# name -> (the expression with knob k, the context): each grows with k.
SHAPES: dict[str, tuple[Callable[[int], str], dict]] = {
    "`'zz' in params.l` × k": (lambda k: " || ".join(["'zz' in params.l"] * k), _INPUTS),
    "`params.l + …` (k lists)": (
        lambda k: "size(" + " + ".join(["params.l"] * k) + ") > 0",
        _INPUTS,
    ),
    "`params.l + params.b0 + …` (k other inputs)": (
        lambda k: "size(params.l + " + " + ".join(f"params.b{i}" for i in range(k)) + ") > 0",
        {"params": {"l": _STRINGS[:-100], **{f"b{i}": [] for i in range(40)}}},
    ),
    "`size(params.m) > 0` × k": (
        lambda k: " && ".join(["size(params.m) > 0"] * k),
        _INPUTS,
    ),
    "`params.l == params.l` × k": (lambda k: " && ".join(["params.l == params.l"] * k), _INPUTS),
    "`params.m.exists(…)`, k comparisons": (
        lambda k: "params.m.exists(steps, steps == 'zz'" + " || steps == 'q'" * k + ")",
        _INPUTS,
    ),
    "two `exists` nested over k literals": (
        lambda k: f"{_items(k)}.exists(params, {_items(k)}.exists(steps, params == steps + 99))",
        {},
    ),
    "`map` over k literals": (lambda k: f"{_items(k)}.map(params, params).size() > 0", {}),
    "`filter` over k literals": (
        lambda k: f"{_items(k)}.filter(steps, steps >= 0).size() > 0",
        {},
    ),
    "k doubling `map`s of a list": (
        lambda k: "size([[1,2,3,4,5,6,7,8]]" + ".map(params, params + params)" * k + ") > 0",
        {},
    ),
    "`params.s.matches('\\\\w{k}x')`": (
        lambda k: "params.s.matches('\\\\w{" + str(k) + "}x')",
        _INPUTS,
    ),
    "`matches('(a{k}){k}b')` on a literal": (
        lambda k: "'" + "a" * 1000 + f"'.matches('(a{{{k}}}){{{k}}}b')",
        {},
    ),
    "four roots read whole (`size(x.l)`)": (
        lambda k: "size(params.l) + size(steps.l) + size(run.l) + size(signals.l) > " + str(k),
        {"params": _QUARTER, "steps": _QUARTER, "run": _QUARTER, "signals": _QUARTER},
    ),
}


def _accepted(source: str, roots: frozenset[str] = RUN_ROOTS) -> bool:
    try:
        compile_expression(source, roots)
    except ExpressionError:
        return False
    return True


def largest_accepted(
    make: Callable[[int], str], roots: frozenset[str] = RUN_ROOTS, limit: int = 1 << 20
) -> int:
    """The largest k whose expression the limits accept (0 if none)."""
    if not _accepted(make(1), roots):
        return 0
    low, high = 1, 2
    while high < limit and _accepted(make(high), roots):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _accepted(make(middle), roots) else (low, middle)
    return low


def worst_accepted() -> list[dict[str, Any]]:
    """Each shape at its largest accepted size, evaluated five times: best CPU and wall ms."""
    rows = []
    for name, (make, context) in SHAPES.items():
        k = largest_accepted(make)
        expression = make(k)
        cost = expression_limits.check_total([expression_limits.analyze(expression, RUN_ROOTS)])
        cpu, wall = [], []
        for _ in range(5):
            started_cpu, started = time.thread_time(), time.perf_counter()
            evaluate_expression(expression, context)
            cpu.append(time.thread_time() - started_cpu)
            wall.append(time.perf_counter() - started)
        rows.append(
            {
                "shape": name,
                "k": k,
                "chars": len(expression),
                "cost": cost,
                "cpu_ms": round(min(cpu) * 1000, 2),
                "wall_ms": round(min(wall) * 1000, 2),
            }
        )
        print(f"   {name}: k={k}, {rows[-1]['cpu_ms']} ms CPU", flush=True)
    return rows


def _membership(k: int) -> str:
    return " || ".join(["'zz' in signal.payload.l"] * k)


# The costliest kind found above, as a trigger `when`: membership tests over a payload list.
WORST_WHEN = _membership(largest_accepted(_membership, TRIGGER_ROOTS))
OVER_INPUT_WHEN = "size(signal.payload.l) > 0"
BOMBS = {
    "nested maps, 10^7 elements": "size("
    + "".join(f"{_items(10)}.map({v}, " for v in ["signal", "signals"] * 3 + ["signal"])
    + "1"
    + ")" * 7
    + ") > 0",
    "doubling string, 2^30 chars": "size(['a']" + ".map(signal, signal + signal)" * 30 + ") > 0",
}


def _billion_laughs() -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def _big_definition(nonce: str) -> str:
    """A valid definition of about 300 KB of YAML: 500 steps with params."""
    lines = [f"id: bench-big-{nonce}", "steps:"]
    for i in range(500):
        lines += [f"  - id: s{i}", "    type: noop", "    params:", "      outputs:"]
        lines += [f"        k{j}: value-{i}-{j}-{'x' * 40}" for j in range(8)]
    return "\n".join(lines) + "\n"


async def probe(http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> list[float]:
    """`/healthz` latencies, one request every PROBE_INTERVAL until `stop`."""
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        async with http.get(url) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"/healthz -> {response.status}")
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(PROBE_INTERVAL)
    return latencies


async def phase(
    stack: Stack, seconds: float, clients: int, request: Callable[[int], Awaitable[Any]] | None
) -> dict[str, Any]:
    """Probe `/healthz` for `seconds` while `clients` loops call `request(i)` back to back."""
    stop = asyncio.Event()
    done = 0
    request_times: list[float] = []

    async def client(c: int) -> None:
        nonlocal done
        while not stop.is_set():
            started = time.perf_counter()
            assert request is not None
            await request(c * 1_000_000 + done)
            request_times.append(time.perf_counter() - started)
            done += 1

    before = stack.cpu_seconds()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        prober = asyncio.create_task(probe(http, f"{stack.api_url}/healthz", stop))
        loops = [asyncio.create_task(client(c)) for c in range(clients if request else 0)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*loops)
        latencies = await prober
    after = stack.cpu_seconds()
    return {
        "healthz_ms": summary_ms(latencies),
        "requests": done,
        "requests_per_s": round(done / seconds, 1),
        "request_ms": summary_ms(request_times) if request_times else None,
        "api_cpu_s": round(after.get("api", 0) - before.get("api", 0), 1),
    }


PHASES = ("idle", "worst_when", "over_input", "documents")


async def live(
    stack: Stack, seconds: float, clients: int, only: tuple[str, ...] = PHASES
) -> dict[str, Any]:
    nonce = uuid.uuid4().hex[:8]
    worst, over = f"bench.cel.worst.{nonce}", f"bench.cel.over.{nonce}"
    results: dict[str, Any] = {"registration": {}}
    async with Api.connect(stack) as api:
        for topic, when in ((worst, WORST_WHEN), (over, OVER_INPUT_WHEN)):
            await api.push(
                {
                    "id": f"bench-cel-{topic.rsplit('.', 2)[-2]}-{nonce}",
                    "triggers": [{"signal": {"all_of": [{"name": topic}], "when": when}}],
                    "steps": [{"id": "go", "type": "noop"}],
                }
            )
        for name, when in BOMBS.items():
            started = time.perf_counter()
            async with api.http.post(
                f"{api.base_url}/workflows",
                json={
                    "id": f"bench-bomb-{nonce}",
                    "triggers": [{"signal": {"all_of": [{"name": "x"}], "when": when}}],
                    "steps": [{"id": "go", "type": "noop"}],
                },
            ) as response:
                body = await response.json()
            results["registration"][name] = {
                "status": response.status,
                "ms": round((time.perf_counter() - started) * 1000, 1),
                "message": body["detail"][0]["msg"] if body.get("detail") else body["message"],
            }

        async def publish(topic: str, strings: list[str], i: int) -> None:
            body = {"name": topic, "params": {"i": i}, "payload": {"l": strings}}
            result = await api.call("POST", "/signals", json=body)
            if result["runs"]:
                raise RuntimeError("a bench signal started a run")

        over_list = [f"s{i}" for i in range(3_000)]  # over the input limit once read
        big_yaml = _big_definition(nonce)
        documents = [
            (_billion_laughs(), "application/yaml"),
            ("[" * 1_000 + "]" * 1_000, "application/json"),
            (big_yaml, "application/yaml"),
        ]

        async def post_document(i: int) -> None:
            content, content_type = documents[i % len(documents)]
            await api.call(
                "POST",
                "/workflows/validate",
                data=content.encode(),
                headers={"content-type": content_type},
                ok=(200, 422),
            )

        requests: dict[str, Callable[[int], Awaitable[Any]] | None] = {
            "idle": None,
            "worst_when": lambda i: publish(worst, _STRINGS[:2_000], i),
            "over_input": lambda i: publish(over, over_list, i),
            "documents": post_document,
        }
        for name in only:
            print(f"   {name}", flush=True)
            results[name] = await phase(stack, seconds, clients, requests[name])
        if "over_input" in only:
            outcome = await api.call("GET", "/signals", params={"name": over, "limit": 1})
            detail = await api.call("GET", f"/signals/{outcome['items'][0]['id']}")
            results["over_input"]["outcome"] = detail["matches"][0]["outcome"]
        results["big_definition_bytes"] = len(big_yaml)
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        "| shape at its largest accepted size | k | cost units | CPU ms | wall ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in results["worst_accepted"]:
        lines.append(
            f"| {row['shape']} | {row['k']} | {row['cost']:,} | {row['cpu_ms']} | "
            f"{row['wall_ms']} |"
        )
    if "live" not in results:
        return "\n".join(lines)
    lines += [
        "",
        "| phase | /healthz p50 / p99 / max ms | requests/s | request p50 / p99 ms "
        "| p99 ≤ 100 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in PHASES:
        if key not in results["live"]:
            continue
        r = results["live"][key]
        h, q = r["healthz_ms"], r["request_ms"]
        requests = f"{q['p50']:.0f} / {q['p99']:.0f}" if q else "-"
        met = "yes" if h["p99"] <= TARGET_P99_MS else "**no**"
        lines.append(
            f"| {key} | {h['p50']:.1f} / {h['p99']:.1f} / {h['max']:.1f} | "
            f"{r['requests_per_s']} | {requests} | {met} |"
        )
    for name, r in results["live"]["registration"].items():
        lines.append(f"\nregistering {name}: {r['status']} in {r['ms']} ms ({r['message']})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30, help="per live phase")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients per phase")
    parser.add_argument("--offline", action="store_true", help="only the in-process table")
    parser.add_argument(
        "--only", default=",".join(PHASES), help=f"live phases, comma-separated: {PHASES}"
    )
    parser.add_argument("--out", type=Path, help="write JSON results here")
    args = parser.parse_args()
    assert _accepted(WORST_WHEN, TRIGGER_ROOTS)
    assert not any(_accepted(bomb, TRIGGER_ROOTS) for bomb in BOMBS.values())
    print("worst accepted expressions, in process", flush=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "source": source(),
        "worst_accepted": worst_accepted(),
    }
    if not args.offline:
        with tempfile.TemporaryDirectory(prefix="maestro-cel-bench-") as work:
            stack = Stack(Path(work))
            stack.start()
            try:
                print("live, against maestro up", flush=True)
                phases = tuple(args.only.split(","))
                results["live"] = asyncio.run(live(stack, args.seconds, args.clients, phases))
            finally:
                stack.stop()
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
