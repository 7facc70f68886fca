"""Markdown for ``bench/RESULTS.md``: the side-by-side table, ratios, Tether's scenarios, targets."""

from __future__ import annotations

from typing import Any

# The targets.  Ratios are taken within one run (peers measured in the same invocation).
PY_SOCKETIO = "socketio+uvicorn"
CHANNELS = "daphne+channels"


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


def side_by_side(t: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    out = [
        "| server | echo msg/s | echo µs/msg | echo client CPU | bcast deliveries/s | µs/delivery"
        " | bcast client CPU | KB/idle conn (1,000) | push/stream msg/s | µs/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    echo, fan, st = t.get("echo"), t.get("fanout"), t.get("stream")
    idle1k = next(
        (
            x
            for x in t.get("idle", [])
            if isinstance(x, dict)
            and x.get("n") == min((y.get("n", 0) for y in t.get("idle", []) if isinstance(y, dict)), default=0)
        ),
        None,
    )
    out.append(
        "| **Tether** (durable; echo = prompt→prompt_ack + event, bcast = ingest fan-out, push = ingest stream)"
        f" | {_f(_g(echo, 'msgs_per_s'))} | **{_f(_g(echo, 'session_us'))}** | {_f(_g(echo, 'client_cpu_share'), 2)}"
        f" | {_f(_g(fan, 'deliveries_per_s'))} | **{_f(_g(fan, 'session_us'))}** | {_f(_g(fan, 'client_cpu_share'), 2)}"
        f" | **{_f(_g(idle1k, 'kb_per_conn'))}** | {_f(_g(st, 'events_per_s'))} | **{_f(_g(st, 'session_us'))}** |"
    )
    for p in peers:
        if "error" in p:
            out.append(f"| {p['server']} | error: {p['error'][:120]} |||||||||")
            continue
        out.append(
            f"| {p['server']} | {_f(_g(p, 'echo', 'msgs_per_s'))} | {_f(_g(p, 'echo', 'session_us'))}"
            f" | {_f(_g(p, 'echo', 'client_cpu_share'), 2)} | {_f(_g(p, 'bcast', 'deliveries_per_s'))}"
            f" | {_f(_g(p, 'bcast', 'session_us'))} | {_f(_g(p, 'bcast', 'client_cpu_share'), 2)}"
            f" | {_f(_g(p, 'idle', 'kb_per_conn'))} | {_f(_g(p, 'push', 'msgs_per_s'))} | {_f(_g(p, 'push', 'session_us'))} |"
        )
    return out


def ratios(t: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    echo_us, fan_us, st_us = _g(t, "echo", "session_us"), _g(t, "fanout", "session_us"), _g(t, "stream", "session_us")
    idle = [x for x in t.get("idle", []) if isinstance(x, dict) and "kb_per_conn" in x]
    kb = idle[0]["kb_per_conn"] if idle else None
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
        f"{_f(_g(d, prefix + 'session_us'))} | {_f(_g(d, prefix + 'pg_us'))} | {_f(_g(d, prefix + 'auth_us'))}"
        f" | {_f(_g(d, prefix + 'client_cpu_share'), 2)} | {_f(_g(d, prefix + 'core_busy'))}"
        f" | {_f(_g(d, prefix + 'foreign_cpu'), 2)}"
    )


def tether_table(t: dict[str, Any]) -> list[str]:
    head = (
        "| scenario | size | wall throughput | latency p50 / p99 / p99.9 (ms) | session µs/unit | Postgres µs/unit"
        " | auth µs/unit | client CPU (cores) | core busy [0, 1] | foreign CPU | RSS MB | lost / dup |"
    )
    out = [head, "|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---|"]

    def row(name: str, size: str, thr: str, lat: str, d: dict[str, Any] | None, prefix: str = "") -> None:
        if d is None:
            return
        if "error" in d:
            out.append(f"| {name} | {size} | error: {str(d['error'])[:200]} |||||||||")
            return
        lost = f"{_f(d.get('lost'))} / {_f(d.get('duplicates'))}"
        out.append(f"| {name} | {size} | {thr} | {lat} | {_cost_cells(d, prefix)} | {_f(d.get('rss_mb'))} | {lost} |")

    def lat(d: dict[str, Any] | None, p: str) -> str:
        return " / ".join(_f(_g(d, f"{p}_{q}_ms"), 2) for q in ("p50", "p99", "p99_9"))

    f = t.get("fanout")
    if f:
        row(
            "1 durable fan-out (unit: delivery)",
            f"{_f(_g(f, 'sockets'))} sockets × {_f(_g(f, 'events'))} events, ingest batches of {_f(_g(f, 'batch'))}",
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
    r = t.get("stream_rate")
    if r:
        row(
            "2b agent stream at a fixed rate (unit: event)",
            f"offered {_f(_g(r, 'rate'))} events/s, 1 event per ingest request, ≤ 100 requests in flight",
            f"achieved {_f(_g(r, 'events_per_s'))} events/s",
            lat(r, "lat"),
            r,
        )
    a = t.get("agent")
    if a:
        row(
            "2c built-in agent (unit: event)",
            f"1 prompt → {_f(_g(a, 'chunks'))} chunks, 1 transaction each",
            f"{_f(_g(a, 'events_per_s'))} events/s",
            f"first chunk {_f(_g(a, 'first_chunk_ms'), 1)} ms",
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
            f" opened in {_f(i['open_secs_incl_tokens'], 1)} s incl. tokens | – | {_f(i['session_us_per_open'])}"
            f" (per open) | – | – | – | – | – | {_f(i['rss_base_mb'])} → {_f(i['rss_mb'])}"
            f" = **{_f(i['kb_per_conn'])} KB/session** | {_f(i['lost'])} not live |"
        )
    st = t.get("storm")
    if st:
        if "error" in st:
            row("5 connect storm", "", "", "", st)
        else:
            row(
                "5a connect storm: connect + INIT (unit: connect)",
                f"{_f(st['n'])} clients, fresh tokens, {_f(st['concurrency'])} handshakes in flight",
                f"{_f(st['connects_per_s'])} connects/s; accept-queue overflows"
                f" {_f(st.get('connect_listen_overflows'))}",
                lat(st, "connect"),
                st,
                "connect_",
            )
            row(
                "5b all dropped at once, resume (unit: reconnect)",
                f"{_f(st['n'])} over {_f(st['projects'])} projects, events published throughout",
                f"all live again in **{_f(st['recover_secs'], 2)} s** ({_f(st['reconnects_per_s'])}/s);"
                f" accept-queue overflows {_f(st.get('reconnect_listen_overflows'))}",
                lat(st, "reconnect"),
                st,
                "reconnect_",
            )
    c = t.get("catchup")
    if c:
        row(
            "6 catch-up (unit: event)",
            f"resume from 0 over {_f(_g(c, 'events'))} events",
            f"{_f(_g(c, 'events_per_s'))} events/s",
            f"ready after {_f(_g(c, 'ready_ms'), 1)} ms; done in {_f(_g(c, 'secs'), 2)} s",
            c,
        )
    cs = t.get("cold_start")
    if cs:
        if "error" in cs:
            out.append(f"| 7 cold start | | error: {cs['error'][:200]} |||||||||")
        else:
            out.append(
                f"| 7 cold start | process start → /readyz 200, migrated database | median **{_f(cs['median_s'], 3)} s**"
                f" (runs {', '.join(_f(x, 3) for x in cs['runs_s'])}) | last run: before the start-up phases"
                f" (interpreter, imports, create_app) {_f(cs.get('before_phases_s'), 3)} s; phases"
                f" {', '.join(f'{k} {v:.3f}' for k, v in cs.get('phases_s', {}).items())} s | – | – | – | – | – | – | {_f(cs['rss_mb'])} | – |"
            )
    return out


def targets(t: dict[str, Any], peers: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of the issue."""
    by = {p["server"]: p for p in peers if "error" not in p}
    res: list[tuple[str, str, bool | None]] = []
    fan = _g(t, "fanout", "session_us")
    for peer, div in ((PY_SOCKETIO, 1.5), (CHANNELS, 5.0)):
        ref = _g(by.get(peer), "bcast", "session_us")
        if fan is None or ref is None:
            res.append((f"fan-out µs/delivery ≤ {peer} ÷ {div}", f"Tether {_f(fan)}; {peer} not measured", None))
        else:
            res.append(
                (
                    f"fan-out µs/delivery ≤ {peer} ÷ {div:g}",
                    f"Tether {_f(fan)} vs {_f(ref)} ÷ {div:g} = {_f(ref / div)}",
                    fan <= ref / div,
                )
            )
    eps = _g(t, "stream", "events_per_s")
    res.append(
        (
            "agent stream ≥ 20,000 events/s per replica (ingest, batched)",
            f"{_f(eps)} events/s",
            None if eps is None else eps >= 20_000,
        )
    )
    bi = _g(t, "agent", "events_per_s")
    if bi is not None:
        res.append(("(built-in agent, 1 event per transaction) ≥ 20,000 events/s", f"{_f(bi)} events/s", bi >= 20_000))
    p99 = _g(t, "stream_rate", "lat_p99_ms")
    rate = _g(t, "stream_rate", "rate")
    got = _g(t, "stream_rate", "events_per_s")
    res.append(
        (
            f"p99 ingest→client < 5 ms at {_f(rate)} events/s",
            f"p99 {_f(p99, 2)} ms (achieved {_f(got)} of {_f(rate)} events/s offered)",
            None if p99 is None else (p99 < 5 and got is not None and rate is not None and got >= 0.95 * rate),
        )
    )
    res.extend(
        (f"idle ≤ 30 KB/session ({_f(i['n'])} sessions)", f"{_f(i['kb_per_conn'])} KB", i["kb_per_conn"] <= 30)
        for i in t.get("idle", [])
        if isinstance(i, dict) and "kb_per_conn" in i
    )
    big = max((i for i in t.get("idle", []) if isinstance(i, dict) and "live" in i), key=lambda i: i["n"], default=None)
    if big is not None:
        res.append(
            (
                "10,000 idle sessions held by one replica",
                f"{_f(big['live'])} of {_f(big['n'])} live",
                big["live"] == big["n"] and big["n"] >= 10_000 if big["n"] >= 10_000 else None,
            )
        )
    cps = _g(t, "storm", "connects_per_s")
    res.append(("connect + INIT ≥ 500/s per replica", f"{_f(cps)}/s", None if cps is None else cps >= 500))
    rec, lost = _g(t, "storm", "recover_secs"), _g(t, "storm", "lost")
    n = _g(t, "storm", "n")
    res.append(
        (
            f"{_f(n)}-client drop + resume storm recovers < 30 s, zero loss",
            f"{_f(rec, 2)} s, lost {_f(lost)}, dup {_f(_g(t, 'storm', 'duplicates'))}",
            None if rec is None else (rec < 30 and lost == 0 and _g(t, "storm", "duplicates") == 0),
        )
    )
    cu = _g(t, "catchup", "events_per_s")
    res.append(("catch-up ≥ 50,000 events/s", f"{_f(cu)} events/s", None if cu is None else cu >= 50_000))
    cold = _g(t, "cold_start", "median_s")
    res.append(("cold start < 1 s", f"{_f(cold, 3)} s", None if cold is None else cold < 1))
    return res


def render(data: dict[str, Any]) -> str:
    t, peers, m = data["tether"], data.get("peers", []), data["machine"]
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
        " µs figures are the server's CPU (utime+stime from /proc) over the client's measured window"
        " divided by the units delivered; Postgres and auth-token CPU are reported separately."
        " Client CPU is the load client's share of one core over the window (it must stay below 1.0"
        " to not be the bottleneck); 'foreign' is CPU used on the machine by none of our processes.",
        "",
        "## Side by side (workloads that map)",
        "",
        *side_by_side(t, peers),
        "",
        "Tether pays for durability on every message (an INSERT + NOTIFY per append, a read per"
        " fan-out) and the peers do not; the echo row for Tether is a prompt → prompt_ack round trip"
        " (one transaction, the prompt's event delivered to the socket as well).",
        "",
        "## Ratios (Tether ÷ peer; < 1 means Tether costs less server CPU or memory)",
        "",
        *ratios(t, peers),
        "",
        "## Tether scenarios",
        "",
        *tether_table(t),
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, measured, met in targets(t, peers):
        lines.append(f"| {name} | {measured} | {'✅' if met else ('–' if met is None else '❌ missed')} |")
    notes = data.get("notes", [])
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines.append("")
    return "\n".join(lines)
