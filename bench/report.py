"""The benchmark's printed report: one fixed-width table per workload, with verdicts.

Each section takes the figures dictionary that :mod:`bench.gateway` builds (the
same one ``--json`` writes) and returns its lines and whether its correctness
checks passed. Targets are those of the "Core platform" issue.
"""

from __future__ import annotations

import json
import sys

TARGETS = {
    "added_p50_ms": 1.0,
    "added_p99_ms": 5.0,
    "streams": 2000,
    "added_gap_p99_ms": 20.0,
    "ratings_per_s": 3000.0,
}


def _f(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(rows: list[list[str]], header: list[str]) -> str:
    """Rows as a fixed-width text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list) -> str:
        # The first column (the row's name) reads best left-aligned, numbers right-aligned.
        return "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def report_latency(figures: dict) -> tuple[list[str], bool]:
    """Section 1 of the report, and whether every request was answered."""
    ok = True
    rows, verdicts = [], []
    for clients, pair in figures["latency"].items():
        up, gw = pair["upstream"], pair["gateway"]
        for name, s in (("upstream", up), ("gateway", gw)):
            rows.append(
                [
                    clients,
                    name,
                    s["requests"],
                    _f(s["per_s"], 0),
                    _f(s["p50_ms"]),
                    _f(s["p99_ms"]),
                    _f(s["gateway_cpu_ms"]),
                    _f(s["upstream_cpu_ms"]),
                    _f(s["client_cpu_ms"]),
                    _f(s["other_cores"], 1),
                    s["failed"],
                ]
            )
            ok &= s["failed"] == 0
        add50, add99 = gw["p50_ms"] - up["p50_ms"], gw["p99_ms"] - up["p99_ms"]
        rows.append(
            [
                clients,
                "added",
                "",
                f"1/{_f(up['per_s'] / gw['per_s'], 0)}" if gw["per_s"] else "n/a",
                f"+{_f(add50)} (x{_f(gw['p50_ms'] / up['p50_ms'], 1)})",
                f"+{_f(add99)} (x{_f(gw['p99_ms'] / up['p99_ms'], 1)})",
                "",
                "",
                "",
                "",
                "",
            ]
        )
        verdicts.append(
            f"   {clients} client(s): added p50 {_f(add50)} ms (target <= {TARGETS['added_p50_ms']:g}) "
            f"{_verdict(add50 <= TARGETS['added_p50_ms'])}; added p99 {_f(add99)} ms "
            f"(target <= {TARGETS['added_p99_ms']:g}) {_verdict(add99 <= TARGETS['added_p99_ms'])}"
        )
    out = [
        "1. Added latency (closed loop, keep-alive): POST /api/chat via gateway vs POST /v1/chat/completions "
        "on the upstream",
        table(
            rows,
            [
                "clients",
                "path",
                "requests",
                "req/s",
                "p50 ms",
                "p99 ms",
                "gw cpu ms/req",
                "up cpu ms/req",
                "client cpu ms/req",
                "others' cores",
                "failed",
            ],
        ),
        *verdicts,
    ]
    return out, ok


def report_streams(figures: dict) -> tuple[list[str], bool]:
    """Section 2 of the report, and whether every stream completed."""
    plan = figures["plan"]
    length_s = plan["stream_tokens"] * plan["stream_gap_s"]
    starts = (
        f"{plan['stream_starts_per_s']:g} starts/s" if plan["stream_starts_per_s"] else f"evenly over {length_s:g} s"
    )
    out = [
        f"2. Concurrent SSE streams of {plan['stream_tokens']} tokens {plan['stream_gap_s'] * 1000:g} ms apart, "
        f"started {starts}: upstream directly vs /api/chat stream:true via gateway"
    ]
    rows, verdicts, failures, ok = [], [], [], True
    for s in figures["streams"]:
        for name in ("upstream", "gateway"):
            r = s[name]
            rows.append(
                [
                    s["n"],
                    name,
                    f"{r['ok']}/{r['n']}",
                    r["peak_open"],
                    r["peak_streaming"],
                    _f(r["gap_p50_ms"], 1),
                    _f(r["gap_p99_ms"], 1),
                    _f(r["added_gap_p99_ms"], 1),
                    _f(r["steady_gap_p99_ms"], 1),
                    _f(r["first_token_p50_ms"], 0),
                    _f(r["first_token_p99_ms"], 0),
                    _f(r["gateway_cpu_s"], 1),
                    _f(r["upstream_cpu_s"], 1),
                    _f(r["client_cpu_s"], 1),
                    _f(r["other_cores"], 1),
                    r["peak_gateway_fds"] or "",
                ]
            )
            ok &= r["ok"] == r["n"]
            if r["errors"]:
                failures.append(f"   {s['n']} {name} failures: {json.dumps(r['errors'])[:400]}")
        gw = s["gateway"]
        held = gw["peak_streaming"] >= TARGETS["streams"] and gw["ok"] == gw["n"]
        verdicts.append(
            f"   {s['n']} streams: completed {gw['ok']}, at most {gw['peak_streaming']} mid-answer at once "
            f"(target >= {TARGETS['streams']}) {_verdict(held)}; "
            f"added inter-token p99 {_f(gw['added_gap_p99_ms'], 1)} ms "
            f"(direct: {_f(s['upstream']['added_gap_p99_ms'], 1)}; target <= {TARGETS['added_gap_p99_ms']:g}) "
            f"{_verdict(gw['added_gap_p99_ms'] <= TARGETS['added_gap_p99_ms'])}"
        )
    out.append(
        table(
            rows,
            [
                "streams",
                "path",
                "completed",
                "peak conns",
                "peak streaming",
                "gap p50 ms",
                "gap p99 ms",
                "added p99 ms",
                "steady gap p99",
                "1st token p50",
                "1st token p99",
                "gw cpu s",
                "up cpu s",
                "client cpu s",
                "others' cores",
                "gw fds",
            ],
        )
    )
    out += failures + verdicts
    out.append(
        "   peak streaming: streams between their first and last token at one instant; steady gap: gaps while "
        "every stream was mid-answer (n/a: there was no such moment); added: gap minus the upstream's own gap"
    )
    return out, ok


def report_ratings(figures: dict) -> tuple[list[str], bool]:
    """Section 3 of the report, and whether every rating was stored without a 5xx."""
    r, plan = figures["ratings"], figures["plan"]
    fb, floor = r["feedback"], r["healthz"]
    rows = [
        [
            "GET /healthz (HTTP floor)",
            _f(floor["per_s"], 0),
            _f(floor["p50_ms"]),
            _f(floor["p99_ms"]),
            _f(floor["gateway_cpu_ms"]),
            _f(floor["other_cores"], 1),
            "",
            "",
        ],
        [
            "POST /api/feedback",
            _f(fb["per_s"], 0),
            _f(fb["p50_ms"]),
            _f(fb["p99_ms"]),
            _f(fb["gateway_cpu_ms"]),
            _f(fb["other_cores"], 1),
            fb["server_errors"],
            fb["lost"],
        ],
        ["record_rating() in process", _f(r["direct_per_s"], 0), "", "", "", "", "", ""],
    ]
    ok = fb["lost"] == 0 and fb["server_errors"] == 0 and fb["failed"] == 0 and floor["failed"] == 0
    return [
        f"3. Ratings over HTTP: {fb['requests']} x POST /api/feedback, {plan['ratings_concurrency']} keep-alive "
        "clients, each on a distinct answer",
        table(rows, ["what", "per s", "p50 ms", "p99 ms", "gw cpu ms/req", "others' cores", "5xx", "lost"]),
        f"   {_f(fb['per_s'], 0)} ratings/s = x{_f(fb['per_s'] / floor['per_s'])} of the /healthz floor, "
        f"x{_f(fb['per_s'] / r['direct_per_s'])} of the in-process store (target >= {TARGETS['ratings_per_s']:,.0f}/s) "
        f"{_verdict(fb['per_s'] >= TARGETS['ratings_per_s'])}; stored {fb['stored']} of {fb['stored'] + fb['lost']}, "
        f"lost {fb['lost']}, 5xx {fb['server_errors']}",
    ], ok


SECTIONS = {"latency": report_latency, "streams": report_streams, "ratings": report_ratings}


def report(figures: dict) -> tuple[str, bool]:
    """The printed report, and whether every correctness check passed."""
    load = figures["loadavg"]
    out = [
        f"Gateway benchmark ({figures['mode']}) — {figures['date']}, {figures['cpus']} CPUs, "
        f"gunicorn {figures['workers']} gevent workers, Python {figures['python']}, "
        f"load average at start {load[0]:.1f}",
    ]
    ok = True
    for name, section in SECTIONS.items():
        if name in figures:
            lines, passed = section(figures)
            out += ["", *lines]
            ok &= passed
    out += [
        "",
        "others' cores: how many of the machine's cores processes outside the benchmark kept busy meanwhile.",
        f"File-descriptor limit (soft) raised to {figures['nofile']} for the bench, gateway and upstream.",
        "Seconds taken: " + (", ".join(f"{k} {v:.1f}" for k, v in figures.get("timings_s", {}).items()) or "n/a"),
        "Checks: " + ("all requests answered, no 5xx, no rating lost" if ok else "FAILED (see failed/lost/5xx above)"),
    ]
    return "\n".join(out), ok


if __name__ == "__main__":
    # `python -m bench.report FIGURES.json` prints a saved run (bench/gateway.py --json) again.
    with open(sys.argv[1]) as fh:
        print(report(json.load(fh))[0])
