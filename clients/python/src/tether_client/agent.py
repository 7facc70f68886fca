"""How agent events name the prompt they answer and carry their text (the built-in agent's
and the webhook adapter's conventions; not part of the frame contract)."""

from __future__ import annotations

from typing import Final

from .frames import Event

# The keys an agent event may use to name the prompt it answers (by the prompt's seq).
REPLY_KEYS: Final = ("prompt_seq", "reply_to", "in_reply_to")
TEXT_KEYS: Final = ("text", "delta", "content", "chunk")


def reply_to(event: Event) -> int | None:
    """The seq of the prompt an agent event answers, when the event names it."""
    for key in REPLY_KEYS:
        value = event.data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def event_text(event: Event) -> str:
    """The text carried by a ``prompt`` or ``agent_chunk`` event (empty when none)."""
    for key in TEXT_KEYS:
        value = event.data.get(key)
        if isinstance(value, str):
            return value
    return ""


def answers(event: Event, prompt_seq: int) -> bool:
    """Whether an agent event belongs to the answer to the prompt stored at ``prompt_seq``.

    Events that name their prompt must name this one; events that do not are taken as
    answering the latest prompt before them.
    """
    if event.seq <= prompt_seq:
        return False
    named = reply_to(event)
    return named is None or named == prompt_seq
