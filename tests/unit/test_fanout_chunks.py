"""Batched delivery's framing (F20): consecutive events, bounded frames, nothing lost or reordered."""

from __future__ import annotations

import json

from tether_session.fanout import BATCH_MAX_CHARS, BATCH_MAX_EVENTS, chunk_frames


def encode_batch(texts: list[str]) -> str:
    return '{"type":"events","v":1,"events":[' + ",".join(texts) + "]}"


def event_frames(first: int, count: int, size: int = 10) -> list[tuple[int, str]]:
    return [(s, json.dumps({"type": "event", "seq": s, "pad": "x" * size})) for s in range(first, first + count)]


def test_F20_chunks_carry_every_event_once_in_order_and_name_their_last_seq() -> None:
    frames = event_frames(7, 1234)
    chunks = chunk_frames(frames, encode_batch)
    seqs = [e["seq"] for _, text in chunks for e in json.loads(text)["events"]]
    assert seqs == list(range(7, 7 + 1234))
    for last, text in chunks:
        assert json.loads(text)["events"][-1]["seq"] == last
    assert [len(json.loads(t)["events"]) for _, t in chunks] == [BATCH_MAX_EVENTS, BATCH_MAX_EVENTS, 234]


def test_F20_chunks_are_bounded_in_size_but_never_split_an_event() -> None:
    big = event_frames(1, 10, size=BATCH_MAX_CHARS // 3)
    chunks = chunk_frames(big, encode_batch)
    counts = [len(json.loads(t)["events"]) for _, t in chunks]
    assert sum(counts) == 10
    assert max(counts) <= 3
    huge = event_frames(1, 2, size=BATCH_MAX_CHARS * 2)  # one event above the bound still goes, alone
    assert [len(json.loads(t)["events"]) for _, t in chunk_frames(huge, encode_batch)] == [1, 1]
