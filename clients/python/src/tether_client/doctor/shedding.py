"""The doctor's load-shedding step: is a replica refusing work because it is over a limit?

A replica that sheds answers ``overloaded`` (4503, HTTP 503) or ``rate_limited`` (429)
with a retry-after instead of timing out; clients pace themselves, so nothing fails, but
everyone waits.  The services say so in ``/metrics``: the session replica's gauge
``tether_load_shedding{signal=...}`` is 1 while that signal is over its limit, and both
services count ``tether_load_shed_total{reason=...}``.  Shedding is a warning, not a
failure: the rest of the checklist still runs and may pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import TetherHTTPError, TetherTransportError
from ..http import AuthClient, SessionHttp
from .report import StepWarning

GAUGE = "tether_load_shedding"
COUNTER = "tether_load_shed_total"

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*"(?P<value>(?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition (comments and unparsable lines skipped)."""
    samples = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = {
            m["key"]: _UNESCAPE.sub(lambda e: "\n" if e[1] == "n" else e[1], m["value"])
            for m in _LABEL.finditer(match["labels"] or "")
        }
        samples.append(Sample(match["name"], labels, value))
    return samples


@dataclass(frozen=True)
class Shedding:
    """What one service's ``/metrics`` says about shedding."""

    service: str
    signals: Mapping[str, bool] = field(default_factory=dict)  # signal -> over its limit now
    sheds: Mapping[str, int] = field(default_factory=dict)  # reason -> sheds since the replica started

    @classmethod
    def from_metrics(cls, service: str, text: str) -> Shedding:
        signals: dict[str, bool] = {}
        sheds: dict[str, int] = {}
        for sample in parse_metrics(text):
            if sample.name == GAUGE:
                signals[sample.labels.get("signal", "?")] = sample.value >= 1
            elif sample.name == COUNTER and math.isfinite(sample.value):
                reason = sample.labels.get("reason", "?")
                sheds[reason] = sheds.get(reason, 0) + int(sample.value)
        return cls(service, signals, sheds)

    @property
    def reported(self) -> bool:
        """Whether this service exposes shedding at all (older versions do not)."""
        return bool(self.signals or self.sheds)

    @property
    def over(self) -> list[str]:
        return sorted(name for name, on in self.signals.items() if on)

    @property
    def total(self) -> int:
        return sum(self.sheds.values())

    def describe(self) -> str:
        if not self.reported:
            return f"{self.service}: no shedding metrics (this version does not shed)"
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.sheds.items()) if n) or "none"
        now = f"shedding now (over the limit: {', '.join(self.over)})" if self.over else "not shedding now"
        return f"{self.service}: {now}; {self.total} shed since start (by reason: {reasons})"


def verdict(found: Sequence[Shedding]) -> str:
    """The step's detail when no replica sheds; :class:`StepWarning` when one does or did."""
    detail = "; ".join(s.describe() for s in found)
    shedding = [s for s in found if s.over or s.total]
    if not shedding:
        return detail
    now = [s.service for s in found if s.over]
    raise StepWarning(
        detail,
        code="load_shedding",
        hint=(
            f"{' and '.join(now)} {'is' if len(now) == 1 else 'are'} refusing work right now"
            if now
            else "a replica refused work since it started"
        )
        + ": clients wait and retry, so nothing is lost, but everyone waits. Scale out (add replicas), "
        "or raise the limit of the signal named if the machine has room (see the service's config)",
    )


async def scrape(client: AuthClient | SessionHttp, service: str) -> Shedding:
    """One service's shedding metrics; :class:`StepWarning` when ``/metrics`` cannot be read."""
    try:
        text = await client.metrics()
    except (TetherHTTPError, TetherTransportError) as exc:
        raise StepWarning(
            f"{service}: cannot read {client.base_url}/metrics: {exc}",
            code="metrics_unavailable",
            hint="the doctor reads /metrics to see whether a replica sheds load: let it through any proxy in front",
        ) from None
    return Shedding.from_metrics(service, text)


async def shedding_step(auth: AuthClient, session: SessionHttp) -> str:
    return verdict([await scrape(auth, "auth-token"), await scrape(session, "session")])
