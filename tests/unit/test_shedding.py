"""F25/F41: the shed log writes one line per reason per second with the count, and the pacer hands
out retry delays at the configured capacity (pure: the clock is passed in)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tether_kit.shedding import LOG_INTERVAL_S, SAMPLE_IDS, Pacer, ShedLog


class Lines:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})


def test_F41_a_burst_of_sheds_is_one_line_per_reason_per_second_and_every_shed_is_counted() -> None:
    lines, registry = Lines(), CollectorRegistry()
    log = ShedLog(lines, registry)  # type: ignore[arg-type]
    now = 100.0
    for i in range(1000):  # 1,000 sheds over 2.5 s, two reasons
        log.shed("connect:handshakes" if i % 4 else "ingest:append_queue", now, ref=f"r{i}")
        now += 0.0025
    log.flush_due(now + LOG_INTERVAL_S)
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for line in lines.lines:
        by_reason.setdefault(line["reason"], []).append(line)
    assert sum(x["count"] for x in by_reason["connect:handshakes"]) == 750
    assert sum(x["count"] for x in by_reason["ingest:append_queue"]) == 250
    for reason_lines in by_reason.values():
        assert len(reason_lines) <= 4, "2.5 s of sheds: at most one line per second (and the tail)"
        assert all(len(x["sample"]) <= SAMPLE_IDS for x in reason_lines)
    assert registry.get_sample_value("tether_load_shed_total", {"reason": "connect:handshakes"}) == 750


def test_the_first_shed_is_logged_at_once() -> None:
    lines = Lines()
    ShedLog(lines, CollectorRegistry()).shed("connect:loop_lag", 5.0, ref="c1")  # type: ignore[arg-type]
    assert lines.lines == [{"event": "load_shed", "reason": "connect:loop_lag", "count": 1, "sample": ["c1"]}]


@pytest.mark.parametrize("capacity", [10.0, 500.0])
def test_F25_the_pacer_spreads_retries_at_the_capacity(capacity: float) -> None:
    pacer = Pacer(capacity, random.Random(3))
    now = 50.0
    retries = [now + pacer.delay_ms(now) / 1000 for _ in range(int(capacity * 3))]  # a storm in one instant
    assert min(retries) >= now + 0.1, "never sooner than the floor"
    for start in retries:
        assert sum(1 for t in retries if start <= t < start + 1) <= capacity + 1
    assert max(retries) - min(retries) >= 3 - 2 / capacity, "the wave spans the time the capacity needs"


def test_the_pacer_refuses_a_capacity_of_zero() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Pacer(0)
