"""Markdown for ``bench/RESULTS.md``: the side-by-side table, ratios, Tether's scenarios, variants
(delivery framing, permessage-deflate), targets, and for each missed target its profile and what
was tried (``bench/NOTES.md``).

Re-render from a run's raw results (e.g. after editing ``bench/NOTES.md``)::

    python -m bench.report /tmp/tether-bench/results.json --out bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

# The targets.  Ratios are taken within one run (peers measured in the same invocation).
PY_SOCKETIO = "socketio+uvicorn"
CHANNELS = "daphne+channels"
STARLETTE = "uvicorn+starlette"


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def _g(d: dict[str, Any] | None, *path: str) -> Any:
    cur: Any = d
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return "–"
    return f"{a / b:.2f}"


# -- profiles and notes ------------------------------------------------------------------------
def fold_counts(path: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """Samples per function in a collapsed-stacks file (py-spy ``--format raw``): own, inclusive, total."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = stack.split(";")
        count = int(count_s)
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
    return own, incl, total


def profile_summary(path: Path, top: int = 8) -> dict[str, Any]:
    """The top of one py-spy window (raw collapsed stacks, ``bench/scenarios.py``'s Profiler):
    functions by own time, Tether's own functions by inclusive time, what Postgres waited on."""
    own, incl, total = fold_counts(path)

    def pct(n: int) -> float:
        return round(n / total * 100, 1) if total else 0.0

    waits_file = path.with_suffix(".pgwait.txt")
    waits: list[str] = []
    if waits_file.exists():
        waits = [x.strip() for x in waits_file.read_text(errors="replace").splitlines()[3:] if x.strip()][:3]
    return {
        "window": path.stem,
        "file": str(path),
        "samples": total,
        "self": [[f, pct(n), pct(incl[f])] for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]],
        "tether_incl": [
            [f, pct(n)] for f, n in sorted(incl.items(), key=lambda x: -x[1]) if "tether_" in f and "(" in f
        ][:5],
        "pg_waits": waits,
    }


def load_notes(path: Path) -> dict[str, str]:
    """``bench/NOTES.md``: one ``## <key>`` section per target (keys: see :data:`TARGET_KEYS`)."""
    if not path.exists():
        return {}
    notes: dict[str, str] = {}
    key = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^##\s+(\S+)\s*$", line)
        if m:
            key = m.group(1)
            notes[key] = ""
        elif key is not None:
            notes[key] += line + "\n"
    return {k: v.strip() for k, v in notes.items() if v.strip()}


# target key -> (result, window, prefix of the window's figures): which measured window's profile
# explains a target
TARGET_KEYS: dict[str, tuple[str, int, str] | None] = {
    "fanout": ("fanout", 0, ""),
    "stream": ("stream", 0, ""),
    "agent": ("agent", 0, ""),
    "echo": ("echo", 0, ""),
    "stream_rate": ("stream_rate", 0, ""),
    "idle": None,  # memory: no CPU profile explains it
    "idle_10k": None,
    "connect": ("storm", 0, "connect_"),
    "storm": ("storm", 1, "reconnect_"),
    "catchup": ("catchup", 0, ""),
    "cold_start": None,
}


def _us_cores(d: Any, sys_key: str = "system_us") -> str:
    """'system µs (session µs) · cores' for Tether; 'µs · cores' for a peer (one process, nothing else)."""
    if not isinstance(d, dict):
        return "–"
    if sys_key in d:
        return f"**{_f(d.get(sys_key))}** ({_f(d.get('session_us'))}) · {_f(d.get('system_cores'), 2)}"
    return f"{_f(d.get('session_us'))} · {_f(d.get('cores'), 2)}"


def _idle_first(t: dict[str, Any]) -> dict[str, Any] | None:
    rows = [x for x in t.get("idle", []) if isinstance(x, dict) and "kb_per_conn" in x]
    return min(rows, key=lambda x: x["n"]) if rows else None


def side_by_side(t: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    out = [
        "| server | echo msg/s | echo µs/msg · cores | bcast deliveries/s | bcast µs/delivery · cores"
        " | KB/idle conn (1,000) | push/stream msg/s | push µs/msg · cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    echo, fan, st = t.get("echo"), t.get("fanout"), t.get("stream")
    out.append(
        "| **Tether** (durable; echo = prompt→prompt_ack + event; bcast = fan-out, one event per publish,"
        " per-event frames; push = ingest stream, batches of 50)"
        f" | {_f(_g(echo, 'msgs_per_s'))} | {_us_cores(echo)} | {_f(_g(fan, 'deliveries_per_s'))} | {_us_cores(fan)}"
        f" | **{_f(_g(_idle_first(t), 'kb_per_conn'))}** | {_f(_g(st, 'events_per_s'))} | {_us_cores(st)} |"
    )
    for p in peers:
        if "error" in p:
            out.append(f"| {p['server']} | error: {p['error'][:120]} |||||||")
            continue
        out.append(
            f"| {p['server']} | {_f(_g(p, 'echo', 'msgs_per_s'))} | {_us_cores(p.get('echo'))}"
            f" | {_f(_g(p, 'bcast', 'deliveries_per_s'))} | {_us_cores(p.get('bcast'))}"
            f" | {_f(_g(p, 'idle', 'kb_per_conn'))} | {_f(_g(p, 'push', 'msgs_per_s'))} | {_us_cores(p.get('push'))} |"
        )
    return out


def ratios(t: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    echo_us, fan_us, st_us = _g(t, "echo", "system_us"), _g(t, "fanout", "system_us"), _g(t, "stream", "system_us")
    kb = _g(_idle_first(t), "kb_per_conn")
    out = [
        "| peer | echo µs/msg: Tether ÷ peer | µs/delivery: Tether ÷ peer | KB/idle conn: Tether ÷ peer"
        " | µs/msg stream vs push: Tether ÷ peer |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in peers:
        if "error" in p:
            continue
        out.append(
            f"| {p['server']} | {_ratio(echo_us, _g(p, 'echo', 'session_us'))}"
            f" | {_ratio(fan_us, _g(p, 'bcast', 'session_us'))} | {_ratio(kb, _g(p, 'idle', 'kb_per_conn'))}"
            f" | {_ratio(st_us, _g(p, 'push', 'session_us'))} |"
        )
    return out


def _cost_cells(d: dict[str, Any] | None, prefix: str = "") -> str:
    return (
        f"**{_f(_g(d, prefix + 'system_us'))}** | {_f(_g(d, prefix + 'system_cores'), 2)}"
        f" | {_f(_g(d, prefix + 'session_us'))} | {_f(_g(d, prefix + 'pg_us'))} | {_f(_g(d, prefix + 'auth_us'))}"
        f" | {_f(_g(d, prefix + 'client_cpu_share'), 2)} | {_f(_g(d, prefix + 'core_busy'))}"
        f" | {_f(_g(d, prefix + 'foreign_cpu'), 2)}"
    )


def _framing(d: dict[str, Any] | None) -> str:
    """How events reached the client: '; events frames (2.3 events/message)' etc."""
    text = framing_granted(d)
    return "; " + text if text != "–" else ""


def framing_granted(d: dict[str, Any] | None) -> str:
    """What the server granted the load client: per-event or 'events' frames, events per message, deflate."""
    if not isinstance(d, dict) or "batch_frames" not in d:
        return "–"
    epm = d.get("events_per_message")
    per = f" ({_f(epm, 2)} events/message)" if epm is not None else ""
    if not d["batch_frames"]:
        text = f"per-event frames{per}"
    elif d.get("batch_granted"):
        text = f"'events' frames{per}"
    else:
        text = "batch asked, not granted: per-event frames"
    if "permessage-deflate" in str(d.get("extensions") or ""):
        text += ", permessage-deflate"
    return text


def _offer(d: dict[str, Any]) -> str:
    parts = ["batch: true" if d.get("batch_frames") else "no batch"]
    parts.append("deflate offered" if d.get("deflate") else "no deflate offer")
    return ", ".join(parts)


def _granted(d: dict[str, Any]) -> str:
    ext = d.get("extensions")
    return f"batch {_f(d.get('batch_granted'))}; extensions: {ext if ext else 'none'}"


def variants_table(t: dict[str, Any]) -> list[str]:
    """Each measured scenario next to its variants (delivery framing, permessage-deflate)."""
    vs = [v for v in t.get("variants", []) if isinstance(v, dict)]
    if not vs:
        return []
    out = [
        "| scenario | client offers | server granted | wall throughput | system µs/unit | session µs/unit"
        " | Postgres µs/unit | client CPU | events per message | latency p50 / p99 (ms) | RSS: KB/session | lost / dup |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    idle0 = next((i for i in t.get("idle", []) if isinstance(i, dict)), None)
    for name, label, base, thr_key, thr_unit in (
        ("fanout", "1 fan-out (unit: delivery)", t.get("fanout"), "deliveries_per_s", "deliveries/s"),
        ("agent", "2c built-in agent (unit: chunk)", t.get("agent"), "events_per_s", "chunks/s"),
        ("catchup", "6 catch-up (unit: event)", t.get("catchup"), "events_per_s", "events/s"),
        ("idle", f"4 idle {_f(_g(idle0, 'n'))} (unit: session)", idle0, "", ""),
    ):
        rows = [x for x in vs if x.get("scenario") == name]
        if not rows or not isinstance(base, dict):
            continue
        for d in [base, *rows]:
            variant = d.get("variant", "headline (the peers' work)")
            if "error" in d:
                out.append(f"| {label}: {variant} | error: {str(d['error'])[:200]} |||||||||||")
                continue
            thr = f"{_f(d.get(thr_key))} {thr_unit}" if thr_key else f"{_f(d.get('live'))} live"
            lat = " / ".join(_f(d.get(f"lat_{q}_ms"), 2) for q in ("p50", "p99"))
            us = d.get("session_us_per_open") if name == "idle" else d.get("session_us")
            out.append(
                f"| {label}: {variant} | {_offer(d)} | {_granted(d)} | {thr} | {_f(d.get('system_us'))}"
                f" | {_f(us)}{' (per open)' if name == 'idle' else ''}"
                f" | {_f(d.get('pg_us'))} | {_f(d.get('client_cpu_share'), 2)} | {_f(d.get('events_per_message'), 2)}"
                f" | {lat} | {_f(d.get('kb_per_conn'))} | {_f(d.get('lost'))} / {_f(d.get('duplicates'))} |"
            )
    return out


def _cpu(v: Any) -> str:
    """A client CPU share; at ≥ 0.95 of its core the client, not the server, set the pace."""
    return _f(v, 2) + (" (client-bound)" if isinstance(v, int | float) and v >= 0.95 else "")


def compression_table(t: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    """Broadcast µs/delivery with and without permessage-deflate offered by every client."""
    fan = t.get("fanout") if isinstance(t.get("fanout"), dict) else None
    tv = next((v for v in t.get("variants", []) if v.get("scenario") == "fanout" and v.get("deflate")), None)
    rows = []
    if fan is not None and tv is not None and "error" not in tv:
        rows.append(
            f"| **Tether** (fan-out) | {tv.get('extensions') or 'none'} | {_f(fan.get('session_us'))}"
            f" | {_f(tv.get('session_us'))} | {_ratio(tv.get('session_us'), fan.get('session_us'))}"
            f" | {_cpu(fan.get('client_cpu_share'))} → {_cpu(tv.get('client_cpu_share'))} |"
        )
    for p in peers:
        d = p.get("deflate")
        if not isinstance(d, dict):
            continue
        if "error" in d:
            rows.append(f"| {p['server']} | probe failed: {str(d['error'])[:100]} | | | | |")
            continue
        with_ = _g(d, "bcast", "session_us")
        rows.append(
            f"| {p['server']} | {d.get('extensions') or 'none (not negotiated)'} | {_f(_g(p, 'bcast', 'session_us'))}"
            f" | {_f(with_) if with_ is not None else ('–' if 'bcast_error' not in d else 'error')}"
            f" | {_ratio(with_, _g(p, 'bcast', 'session_us'))}"
            f" | {_cpu(_g(p, 'bcast', 'client_cpu_share'))} → {_cpu(_g(d, 'bcast', 'client_cpu_share'))} |"
        )
    if not rows:
        return []
    return [
        "| server | negotiated when the client offers permessage-deflate | bcast µs/delivery, no offer"
        " | with deflate offered | with ÷ without | client CPU without → with |",
        "|---|---|---:|---:|---:|---|",
        *rows,
    ]


def storm_detail(t: dict[str, Any]) -> list[str]:
    """5b, where the time goes: the client's pacing, retries by code, readies per second."""
    st = t.get("storm")
    d = _g(st, "reconnect_detail")
    if not isinstance(st, dict) or not isinstance(d, dict):
        return []
    n = st.get("n") or 0
    us = st.get("reconnect_session_us")
    out = [f"Pacing: {d.get('pacing')}.", ""]
    fa, rd, at, ss, last = d["first_attempt_ms"], d["ready_ms"], d["attempts"], d["session_secs"], d["last_session"]
    out.append(f"- Tokens fetched from auth-token inside the window: {_f(d.get('tokens_fetched'))} (one per attempt).")
    out.append(
        f"- First attempt after the drop: p50 {_f(fa['p50'])} ms, p99 {_f(fa['p99'])} ms, max {_f(fa['max'])} ms."
        f" Live again after: p50 {_f(rd['p50'] / 1000, 2)} s, p90 {_f(rd['p90'] / 1000, 2)} s,"
        f" p99 {_f(rd['p99'] / 1000, 2)} s, last {_f(rd['max'] / 1000, 2)} s."
        + (
            " (First attempts later than the 250 ms jitter are the load client's own lag: one Node process opens"
            " every socket.)"
            if fa["p50"] > 200
            else ""
        )
    )
    overflows = st.get("reconnect_listen_overflows")
    if isinstance(overflows, int) and overflows > 0:
        out.append(
            f"- Accept-queue overflows (system-wide counter): {_f(overflows)} (SYNs or handshake ACKs dropped while the listen queue,"
            " backlog 2048, was full; each costs its client a TCP retransmission 1 s later, then 3 s, 7 s ...:"
            " the slow tail of the attempts that worked)."
        )
    hist = ", ".join(f"{k}: {_f(v)}" for k, v in sorted(at["histogram"].items(), key=lambda x: int(x[0])))
    out.append(
        f"- Attempts: {_f(at['total'])} for {_f(n)} sessions ({_f(at['per_session_mean'], 2)} each;"
        f" sessions by attempts needed: {hist})."
    )
    refusals = st.get("refusals_reconnect") or {}
    out.append(
        "- Failed attempts by cause: "
        + (", ".join(f"{k} {_f(v)}" for k, v in sorted(refusals.items(), key=lambda x: -x[1])) or "none")
        + " (error-frame codes; `close_<code>`: closed before `ready` without an error frame; `connect_timeout`:"
        " no `ready` within 15 s; ECONNRESET/ECONNREFUSED: TCP)."
    )
    out.append(
        f"- Session-seconds, summed over sessions: sleeping in backoff {_f(ss['backoff'])}, fetching"
        f" tokens {_f(ss.get('token_fetch'))}, in attempts that failed {_f(ss['failed_attempts'])}, in the attempt"
        f" that worked {_f(ss['final_attempt'])}."
    )
    out.append(
        f"- The last session back ({_f(last.get('ready_ms'))} ms): {_f(last.get('attempts'))} attempts,"
        f" {_f(last.get('backoff_ms'))} ms in backoff, {_f(last.get('failed_ms'))} ms in failed attempts,"
        f" {_f(last.get('final_ms'))} ms in the one that worked."
    )
    if isinstance(us, int | float) and n:
        out.append(
            f"- Server CPU: {_f(us)} µs per reconnect on the replica = {_f(us * n / 1e6, 1)} s of core 0 for"
            f" {_f(n)} reconnects (the window: core busy {_f(st.get('reconnect_core_busy'))}, replica's own share"
            f" {_f(st.get('reconnect_session_cpu_share'), 2)}); below 30 s needs ≤ {_f(30e6 / n, 0)} µs per reconnect"
            " at full use of the core."
        )
    so = d.get("server_outcomes")
    srv = d.get("server_ready_per_s") or []
    if isinstance(so, dict):
        extra = (so.get("ready") or 0) - n
        rates = [r for _, r in srv]
        out.append(
            "- The replica's own count (`tether_ws_connects_total`) over the window: "
            + ", ".join(f"{k} {_f(v)}" for k, v in sorted(so.items(), key=lambda x: -x[1]))
            + (
                f"; {_f(extra)} `ready` frames more than sessions came back: sent on sockets their clients had"
                " already abandoned (connect timeout), work lost"
                if extra > 0
                else ""
            )
            + (f". Its ready/s: peak {_f(max(rates))}, mean {_f(sum(rates) / len(rates), 0)}" if rates else "")
            + "."
        )
    tl = d.get("timeline_per_s") or []
    if tl:
        step = max(1, (len(tl) + 11) // 12)
        cells = []
        for i in range(0, len(tl), step):
            part = tl[i : i + step]
            on_server = sum(r for t_s, r in srv if i < t_s <= i + len(part))
            cells.append(
                f"{i}–{i + len(part)} s: {sum(x['ready'] for x in part):,} ready"
                + (f" (replica: {on_server:,})" if srv else "")
                + f" / {sum(x['attempts'] for x in part):,} attempts / {sum(x['failed'] for x in part):,} failed"
            )
        out.append("- Per interval after the drop (client's view): " + "; ".join(cells) + ".")
    return out


def _sampling_note(res: Any, prof: dict[str, Any], prefix: str) -> list[str]:
    """py-spy counts a thread as active when it is runnable, also while it waits for a busy core."""
    cpu, wall = _g(res, prefix + "session_cpu_s"), _g(res, prefix + "wall_s")
    if not isinstance(cpu, int | float) or not isinstance(wall, int | float) or not prof.get("samples"):
        return []
    active = prof["samples"] / 250
    note = (
        f"py-spy counted {active:.1f} s as active; the replica used {cpu:.2f} s of CPU in the {wall:.1f} s window"
        f" (foreign CPU {_f(_g(res, prefix + 'foreign_cpu'), 2)})."
    )
    if active > 1.5 * cpu:
        note += (
            f" The sampled time is {active / cpu:.1f}× the CPU time: py-spy also samples the replica while it is"
            " runnable but waiting for its core (or in uvloop's own C code: `Runner.run`), with the last Python"
            " stack it saw, so these shares overstate waiting; profile again on a quiet machine."
        )
    return ["", note]


def missed_sections(
    t: dict[str, Any], tgts: list[tuple[str, str, bool | None, str]], notes: dict[str, str]
) -> list[str]:
    """For each missed target: the top of its window's py-spy profile and what was tried (bench/NOTES.md)."""
    by_key: dict[str, list[tuple[str, str]]] = {}
    for name, measured, met, key in tgts:
        if met is False:
            by_key.setdefault(key, []).append((name, measured))
    out: list[str] = []
    for key, items in by_key.items():
        out += ["", f"### {'; '.join(n for n, _ in items)}", ""]
        out.append("Measured: " + "; ".join(m for _, m in items) + ".")
        out.append("")
        where = TARGET_KEYS.get(key)
        res = t.get(where[0]) if where else None
        profiles = _g(res, "profiles")
        prof = profiles[where[1]] if where and isinstance(profiles, list) and len(profiles) > where[1] else None
        if where is None:
            out.append("Profile: not a CPU target (no py-spy window explains it).")
        elif prof is None:
            out.append(f"Profile: none in this run (`just bench --only {where[0]} --profile DIR` records one).")
        else:
            out += [
                f"Profile of the session replica over window `{prof['window']}` (py-spy, {_f(prof['samples'])} samples"
                f" at 250/s; `{prof['file']}`), the top functions by own time:",
                "",
                "| own % | incl. % | function |",
                "|---:|---:|---|",
                *[f"| {o:.1f} | {i:.1f} | `{fn}` |" for fn, o, i in prof["self"]],
            ]
            out += _sampling_note(res, prof, where[2])
            if prof.get("tether_incl"):
                out += [
                    "",
                    "Tether's own code by inclusive time: "
                    + "; ".join(f"`{fn}` {p:.1f} %" for fn, p in prof["tether_incl"])
                    + ".",
                ]
            if prof.get("pg_waits"):
                out += [
                    "",
                    "Postgres (avg active backends, wait, query): " + " · ".join(f"`{w}`" for w in prof["pg_waits"]),
                ]
        out += ["", "What was tried (bench/NOTES.md, `## " + key + "`):", ""]
        out.append(notes.get(key, "(nothing recorded yet)"))
    return out


def tether_table(t: dict[str, Any]) -> list[str]:
    head = (
        "| scenario | size | wall throughput | latency p50 / p99 / p99.9 (ms) | system µs/unit | system cores"
        " | session µs/unit | Postgres µs/unit | auth µs/unit | client CPU (cores) | core busy [0, 1] | foreign CPU"
        " | framing granted | RSS MB | lost / dup |"
    )
    out = [head, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---|"]

    def row(name: str, size: str, thr: str, lat: str, d: dict[str, Any] | None, prefix: str = "") -> None:
        if d is None:
            return
        if "error" in d:
            out.append(f"| {name} | {size} | error: {str(d['error'])[:200]} ||||||||||||")
            return
        lost = f"{_f(d.get('lost'))} / {_f(d.get('duplicates'))}"
        out.append(
            f"| {name} | {size} | {thr} | {lat} | {_cost_cells(d, prefix)} | {framing_granted(d)}"
            f" | {_f(d.get('rss_mb'))} | {lost} |"
        )

    def lat(d: dict[str, Any] | None, p: str) -> str:
        return " / ".join(_f(_g(d, f"{p}_{q}_ms"), 2) for q in ("p50", "p99", "p99_9"))

    f = t.get("fanout")
    if f:
        row(
            "1 durable fan-out (unit: delivery)",
            f"{_f(_g(f, 'sockets'))} sockets × {_f(_g(f, 'events'))} events, {_f(_g(f, 'batch'))} event(s) per publish",
            f"{_f(_g(f, 'deliveries_per_s'))} deliveries/s",
            lat(f, "lat"),
            f,
        )
    s = t.get("stream")
    if s:
        row(
            "2a agent stream via ingest (unit: event)",
            f"1 publisher → 1 socket, {_f(_g(s, 'events'))} events, batches of {_f(_g(s, 'batch'))},"
            f" {_f(_g(s, 'inflight'))} requests in flight",
            f"{_f(_g(s, 'events_per_s'))} events/s",
            lat(s, "lat"),
            s,
        )
    m = (t.get("stream") or {}).get("more_inflight")
    if m:
        row(
            "2a″ the same publisher, more requests in flight (unit: event)",
            f"{_f(_g(m, 'events'))} events, batches of {_f(_g(m, 'batch'))}, {_f(_g(m, 'inflight'))} requests in flight",
            f"{_f(_g(m, 'events_per_s'))} events/s",
            lat(m, "lat"),
            m,
        )
    r = t.get("stream_rate")
    if r:
        row(
            "2b agent stream at a fixed rate (unit: event)",
            f"offered {_f(_g(r, 'rate'))} events/s, 1 event per ingest request, ≤ 100 requests in flight",
            f"achieved {_f(_g(r, 'events_per_s'))} events/s; disk fdatasync p50 {_f(_g(r, 'fdatasync_p50_ms'), 3)}"
            f" / p99 {_f(_g(r, 'fdatasync_p99_ms'), 3)} ms",
            lat(r, "lat"),
            r,
        )
        d = r.get("diagnostic_sync_commit_off")
        if d:
            row(
                "2b′ DIAGNOSTIC, not the product: the same with synchronous_commit=off",
                "commits return before their WAL flush (not durable); shows the software's own latency",
                f"achieved {_f(_g(d, 'events_per_s'))} events/s",
                lat(d, "lat"),
                d,
            )
    a = t.get("agent")
    if a:
        row(
            "2c built-in agent, token streams (unit: chunk)",
            f"{_f(_g(a, 'streams'))} prompts at once, each answered with {_f(_g(a, 'chunks'))} chunks"
            f" {_f(_g(a, 'delay_ms'))} ms apart (offered {_f(_g(a, 'offered_events_per_s'))} chunks/s), committed as produced",
            f"{_f(_g(a, 'events_per_s'))} chunks/s",
            f"first chunk p50 {_f(_g(a, 'first_chunk_p50_ms'), 1)} / max {_f(_g(a, 'first_chunk_ms'), 1)};"
            f" gap between chunks p50 {_f(_g(a, 'chunk_gap_p50_ms'), 2)} / p99 {_f(_g(a, 'chunk_gap_p99_ms'), 2)}",
            a,
        )
    e = t.get("echo")
    if e:
        row(
            "3 echo-equivalent (unit: prompt round trip)",
            f"{_f(_g(e, 'conns'))} sockets × {_f(_g(e, 'rounds'))}, own project each",
            f"{_f(_g(e, 'msgs_per_s'))} round trips/s",
            lat(e, "rtt"),
            e,
        )
    for i in t.get("idle", []):
        if "error" in i:
            row("4 idle", "", "", "", i)
            continue
        out.append(
            f"| 4 idle (unit: session) | {_f(i['n'])} sessions open + ready | {_f(i['live'])} live,"
            f" opened in {_f(i['open_secs_incl_tokens'], 1)} s incl. tokens | – | – | – | {_f(i['session_us_per_open'])}"
            f" (per open) | – | – | – | – | – | {framing_granted(i)} | {_f(i['rss_base_mb'])} → {_f(i['rss_mb'])}"
            f" = **{_f(i['kb_per_conn'])} KB/session** | {_f(i['lost'])} not live |"
        )
    st = t.get("storm")
    if st:
        if "error" in st:
            row("5 connect storm", "", "", "", st)
        else:
            row(
                "5a connect storm: token + connect + INIT (unit: connect)",
                f"{_f(st['n'])} clients, each fetches its token from auth-token inside the window,"
                f" {_f(st['concurrency'])} clients in flight",
                f"{_f(st['connects_per_s'])} connects/s; accept-queue overflows"
                f" {_f(st.get('connect_listen_overflows'))}",
                lat(st, "connect"),
                st,
                "connect_",
            )
            row(
                "5b all dropped at once, resume (unit: reconnect)",
                f"{_f(st['n'])} over {_f(st['projects'])} projects"
                + (f" of {_f(st['users'])} users" if "users" in st else " of one user")
                + ", events published throughout;"
                f" reconnects paced {'like tether.js' if st.get('reconnect_pacing') == 'tether.js' else 'by a pool'}"
                " (see below)",
                (
                    f"all live again in **{_f(st['recover_secs'], 2)} s** ({_f(st['reconnects_per_s'])}/s);"
                    if not st.get("not_recovered")
                    else f"**{_f(st['not_recovered'])} not back** after {_f(st['recover_secs'], 1)} s (they gave up);"
                )
                + f" accept-queue overflows {_f(st.get('reconnect_listen_overflows'))}",
                lat(st, "reconnect"),
                st,
                "reconnect_",
            )
    c = t.get("catchup")
    if c:
        row(
            "6 catch-up (unit: event)",
            f"resume from 0 over {_f(_g(c, 'events'))} events{_framing(c)}",
            f"{_f(_g(c, 'events_per_s'))} events/s",
            f"ready after {_f(_g(c, 'ready_ms'), 1)} ms; done in {_f(_g(c, 'secs'), 2)} s",
            c,
        )
    cs = t.get("cold_start")
    if cs:
        if "error" in cs:
            out.append(f"| 7 cold start | | error: {cs['error'][:200]} ||||||||||||")
        else:
            out.append(
                f"| 7 cold start | process start → /readyz 200, migrated database | median **{_f(cs['median_s'], 3)} s**"
                f" (runs {', '.join(_f(x, 3) for x in cs['runs_s'])}) | last run: before the start-up phases"
                f" (interpreter, imports, create_app) {_f(cs.get('before_phases_s'), 3)} s; phases"
                f" {', '.join(f'{k} {v:.3f}' for k, v in cs.get('phases_s', {}).items())} s | – | – | – | – | – | – | – | – | – | {_f(cs['rss_mb'])} | – |"
            )
    return out


def find_variant(t: dict[str, Any], scenario: str, label_part: str) -> dict[str, Any] | None:
    return next(
        (
            v
            for v in t.get("variants", [])
            if isinstance(v, dict) and v.get("scenario") == scenario and label_part in str(v.get("variant"))
        ),
        None,
    )


def _vs_peer(name: str, ours: Any, peer: str, ref: Any, factor: float, key: str) -> tuple[str, str, bool | None, str]:
    """``ours ≤ ref * factor`` (system µs against the peer's µs), or unknown when either is missing."""
    bound = f"× {factor:g}" if factor >= 1 else f"÷ {1 / factor:g}"
    if not isinstance(ours, int | float) or not isinstance(ref, int | float):
        return (f"{name} ≤ {peer} {bound}", f"Tether {_f(ours)}; {peer} {_f(ref)}", None, key)
    return (
        f"{name} ≤ {peer} {bound}",
        f"Tether {_f(ours)} vs {_f(ref)} {bound} = {_f(ref * factor)}",
        ours <= ref * factor,
        key,
    )


def targets(t: dict[str, Any], peers: list[dict[str, Any]]) -> list[tuple[str, str, bool | None, str]]:
    """(target, measured, met, key) for each target of the issues; ``key`` names its profile and notes.
    Against a peer, Tether's figure is the system's (session + PostgreSQL + auth-token)."""
    by = {p["server"]: p for p in peers if "error" not in p}
    res: list[tuple[str, str, bool | None, str]] = []
    fan = _g(t, "fanout", "system_us")
    fan_name = "fan-out (1 event per publish, per-event frames) system µs/delivery"
    res.append(_vs_peer(fan_name, fan, PY_SOCKETIO, _g(by.get(PY_SOCKETIO), "bcast", "session_us"), 1 / 1.5, "fanout"))
    res.append(_vs_peer(fan_name, fan, STARLETTE, _g(by.get(STARLETTE), "bcast", "session_us"), 2.0, "fanout"))
    res.append(
        _vs_peer(
            "echo (prompt → ack + event, durable) system µs",
            _g(t, "echo", "system_us"),
            CHANNELS,
            _g(by.get(CHANNELS), "echo", "session_us"),
            0.5,
            "echo",
        )
    )
    eps = _g(t, "stream", "events_per_s")
    res.append(
        (
            "agent stream ≥ 20,000 events/s per replica (ingest, batches of 50)",
            f"{_f(eps)} events/s with {_f(_g(t, 'stream', 'inflight'))} requests in flight"
            + (
                f"; {_f(_g(t, 'stream', 'more_inflight', 'events_per_s'))} with "
                f"{_f(_g(t, 'stream', 'more_inflight', 'inflight'))}"
                if _g(t, "stream", "more_inflight", "events_per_s") is not None
                else ""
            ),
            None if eps is None else eps >= 20_000,
            "stream",
        )
    )
    bi, offered = _g(t, "agent", "events_per_s"), _g(t, "agent", "offered_events_per_s")
    if bi is not None:
        res.append(
            (
                "agent token streams (built-in agent) ≥ 20,000 chunks/s per replica",
                f"{_f(bi)} chunks/s over {_f(_g(t, 'agent', 'streams'))} streams (offered {_f(offered)});"
                f" chunk gap p99 {_f(_g(t, 'agent', 'chunk_gap_p99_ms'), 2)} ms"
                f" for {_f(_g(t, 'agent', 'delay_ms'))} ms produced",
                bi >= 20_000,
                "agent",
            )
        )
    p99 = _g(t, "stream_rate", "lat_p99_ms")
    rate = _g(t, "stream_rate", "rate")
    got = _g(t, "stream_rate", "events_per_s")
    res.append(
        (
            f"p99 ingest→client < 5 ms at {_f(rate)} events/s (1 event per request)",
            f"p99 {_f(p99, 2)} ms (achieved {_f(got)} of {_f(rate)} events/s offered)",
            None if p99 is None else (p99 < 5 and got is not None and rate is not None and got >= 0.95 * rate),
            "stream_rate",
        )
    )
    big = max((i for i in t.get("idle", []) if isinstance(i, dict) and "live" in i), key=lambda i: i["n"], default=None)
    if big is not None:
        held = big["live"] == big["n"]
        res.append(
            (
                "idle ≤ 25 KB/session at 10,000 sessions",
                f"{_f(big.get('kb_per_conn'))} KB at {_f(big['n'])} sessions ({_f(big['live'])} live)",
                (held and big["kb_per_conn"] <= 25) if big["n"] >= 10_000 else None,
                "idle_10k",
            )
        )
    cps = _g(t, "storm", "connects_per_s")
    res.append(
        (
            "connect + INIT, token issue inside the window, ≥ 500/s per replica",
            f"{_f(cps)}/s; system {_f(_g(t, 'storm', 'connect_system_us'))} µs per connect"
            f" (session {_f(_g(t, 'storm', 'connect_session_us'))}, PostgreSQL {_f(_g(t, 'storm', 'connect_pg_us'))},"
            f" auth-token {_f(_g(t, 'storm', 'connect_auth_us'))})",
            None if cps is None else cps >= 500,
            "connect",
        )
    )
    rec, lost, gone = _g(t, "storm", "recover_secs"), _g(t, "storm", "lost"), _g(t, "storm", "not_recovered")
    n = _g(t, "storm", "n")
    res.append(
        (
            f"{_f(n)}-client drop + resume storm (paced like tether.js) recovers < 30 s, zero loss",
            f"{_f(rec, 2)} s, not back by then {_f(gone)}, lost {_f(lost)}, dup {_f(_g(t, 'storm', 'duplicates'))}",
            None if rec is None else (rec < 30 and not gone and lost == 0 and _g(t, "storm", "duplicates") == 0),
            "storm",
        )
    )
    # the headline is per-event frames unless the run was `--batch`; the variant is then the other framing
    per_event, batched = t.get("catchup"), find_variant(t, "catchup", "events frames")
    if _g(per_event, "batch_frames"):
        per_event, batched = find_variant(t, "catchup", "per-event frames"), per_event
    cu = _g(per_event, "events_per_s")
    res.append(
        (
            "catch-up, per-event frames ≥ 100,000 events/s",
            f"{_f(cu)} events/s",
            None if cu is None else cu >= 100_000,
            "catchup",
        )
    )
    cb = _g(batched, "events_per_s")
    res.append(
        (
            "catch-up, `events` frames ≥ 300,000 events/s",
            f"{_f(cb)} events/s",
            None if cb is None else cb >= 300_000,
            "catchup",
        )
    )
    cold = _g(t, "cold_start", "median_s")
    res.append(("cold start < 1 s", f"{_f(cold, 3)} s", None if cold is None else cold < 1, "cold_start"))
    return res


def contention(t: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    """How busy the machine was with other work during the measured windows (foreign CPU, in cores)."""
    values: list[float] = []

    def walk(d: Any) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                if k.endswith(("foreign_cpu", "foreign_cpu_frac")) and isinstance(v, int | float):
                    values.append(float(v))
                else:
                    walk(v)
        elif isinstance(d, list):
            for x in d:
                walk(x)

    walk(t)
    walk(peers)
    if not values:
        return []
    values.sort()
    median = values[len(values) // 2]
    return [
        f"Contention: other work on the machine used a median {median:.2f} cores (max {values[-1]:.2f}) during the"
        f" {len(values)} measured windows ('foreign CPU'); with the calibration figure above it says how far"
        " these figures are from a quiet machine's (every µs/unit is inflated on a busy one). Re-run on a quiet"
        " machine before comparing with other runs.",
        "",
    ]


def render(data: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    t, peers, m = data["tether"], data.get("peers", []), data["machine"]
    notes = notes or {}
    fan = t.get("fanout") if isinstance(t.get("fanout"), dict) else {}
    lines = [
        "# Tether benchmarks, side by side with the peers",
        "",
        f"Latest run: {m['date']} — `{m['command']}` ({m['sizes']} sizes), commit {m['commit']}.",
        "",
        "Machine: "
        f"{m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gb']} GB RAM, {m['kernel']}; Python {m['python']},"
        f" Node {m['node']}, PostgreSQL {m['pg'].get('server_version', '?')} (embedded, fsync={m['pg'].get('fsync')},"
        f" synchronous_commit={m['pg'].get('synchronous_commit')}); calibration loop on the server core"
        f" {_f(m.get('calibration_ns'))} ns/iteration (lower is faster; compare runs with it).",
        "",
        f"Placement: session replica on core {m['session_cpu']} (`taskset`), load client on core {m['client_cpu']},"
        f" Postgres and auth-token on core {m['infra_cpu']}; each peer on core 0, its client on core 1."
        " µs figures are CPU (utime+stime from /proc) over the client's measured window divided by the units"
        " delivered. For Tether, **system** = session replica + PostgreSQL (postmaster and every backend,"
        " reaped ones included) + auth-token, and 'cores' = system CPU ÷ wall time (how many cores it kept"
        " busy: up to 2 here, the replica's core and the infra core); each is also given on its own. A peer is"
        " one process that stores nothing: its µs and cores are that process's. Ratios use the system figure."
        " Client CPU is the load client's share of one core over the window (it must stay below 1.0"
        " to not be the bottleneck); 'foreign' is CPU used on the machine by none of our processes.",
        "",
        *contention(t, peers),
        "## Side by side (workloads that map)",
        "",
        *side_by_side(t, peers),
        "",
        "Tether cells: **system µs** (session µs) · system cores. Tether pays for durability on every"
        " message (an INSERT + NOTIFY per append, a read per fan-out) and the peers do not; the echo row for"
        " Tether is a prompt → prompt_ack round trip (one transaction, the prompt's event delivered to the"
        " socket as well). Tether's bcast publishes one event per HTTP ingest request and each socket gets one"
        " frame per event, like the peers' broadcasts (a peer's broadcast loop runs inside the server, with no"
        " request per message). The peers' kit has no joined-frames mode, so batching appears only in"
        " Tether's variant rows.",
        "",
        "## Ratios (Tether ÷ peer; < 1 means Tether costs less server CPU or memory)",
        "",
        *ratios(t, peers),
        "",
        "## Tether scenarios",
        "",
        "The headline rows do the peers' work: the load client's INIT does not ask for batched delivery, so"
        " every event is its own `event` frame (`--batch` asks for `events` frames, as Tether's clients do;"
        " the variant rows below show both). Every row says what the server granted."
        f" In this run: fan-out{_framing(fan) or ': –'}. Log level `info`, as shipped.",
        "",
        *tether_table(t),
    ]
    detail = storm_detail(t)
    if detail:
        lines += ["", "### 5b: where the time goes", "", *detail]
    var = variants_table(t)
    if var:
        lines += [
            "",
            "## Variants: delivery framing, batched publish, bulk agent, permessage-deflate",
            "",
            "The same scenario on the same replica, right after the default run, with the client's offer changed.",
            "",
            *var,
        ]
    comp = compression_table(t, peers)
    if comp:
        lines += [
            "",
            "## Compression: permessage-deflate offered by every client (as browsers do)",
            "",
            "Hypercorn (wsproto) accepts permessage-deflate whenever a client offers it, with 15-bit windows and"
            " context takeover, and has no setting to refuse it (hypercorn/protocol/ws_stream.py builds"
            " `[PerMessageDeflate()]` for every handshake). Decompressing costs the load client too: where its"
            " CPU reaches its core (client-bound) the server's µs/delivery with deflate is not comparable.",
            "",
            *comp,
        ]
    tgts = targets(t, peers)
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met, _key in tgts:
        lines.append(f"| {name} | {measured} | {'✅' if met else ('–' if met is None else '❌ missed')} |")
    missed = missed_sections(t, tgts, notes)
    if missed:
        lines += ["", "## Missed targets: profile and what was tried", *missed]
    notes = data.get("notes", [])
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description="RESULTS.md from a run's results.json")
    parser.add_argument("results", help="the raw results of a run (bench.run --json, or WORKDIR/results.json)")
    parser.add_argument("--out", default="-", help="markdown file ('-' = stdout)")
    parser.add_argument("--notes", default=str(Path(__file__).resolve().parent / "NOTES.md"))
    args = parser.parse_args(argv)
    md = render(json.loads(Path(args.results).read_text(encoding="utf-8")), load_notes(Path(args.notes)))
    if args.out == "-":
        sys.stdout.write(md)
    else:
        Path(args.out).write_text(md, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
