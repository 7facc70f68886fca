"""Load shedding: refusals answered at once, counted by reason, logged at a bounded rate.

A replica over capacity answers ``503 overloaded`` with ``Retry-After`` instead of letting the
request wait for it.  Sheds come by the thousand per second exactly when the replica has no
CPU to spare, so they are not logged one line each: :class:`LoadShed` counts every shed in
``tether_load_shed_total{reason}`` and ``tether_http_errors_total{code="overloaded"}``, and
:meth:`LoadShed.flush` (run once a second) writes one ``load_shed`` line per reason with the
count and a sample of the request ids.  That line stands in for the ``http_error`` line every
other 4xx/5xx has: the answer carries ``X-Request-ID`` as any other, and its body names the
reason, so a client's refusal can be matched to the count it is part of.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from quart import Response

from . import logs
from .errors import ErrorSpec

SAMPLE_IDS = 5  # request ids named per reason and second


@dataclass
class _Window:
    count: int = 0
    request_ids: list[str] = field(default_factory=list)


class LoadShed:
    def __init__(
        self, log: logs.JsonLogger, registry: CollectorRegistry, spec: ErrorSpec, *, errors: Counter | None = None
    ) -> None:
        self.log = log
        self.spec = spec
        self.total = Counter(
            "tether_load_shed_total", "Requests refused as overloaded, by reason", ["reason"], registry=registry
        )
        self._errors = errors.labels(spec.code) if errors is not None else None
        self._windows: dict[str, _Window] = {}

    def refuse(self, reason: str, detail: str, retry_after_s: int) -> Response:
        """The problem+json answer of one shed; counted now, logged by the next :meth:`flush`."""
        request_id = str(logs.context().get("request_id", ""))
        window = self._windows.setdefault(reason, _Window())
        window.count += 1
        if len(window.request_ids) < SAMPLE_IDS:
            window.request_ids.append(request_id)
        self.total.labels(reason).inc()
        if self._errors is not None:
            self._errors.inc()
        body = {
            "type": f"https://tether.dev/errors/{self.spec.code}",
            "title": self.spec.title,
            "status": self.spec.status,
            "code": self.spec.code,
            "detail": detail,
            "request_id": request_id,
            "reason": reason,
        }
        return Response(
            json.dumps(body),
            status=self.spec.status,
            content_type="application/problem+json",
            headers={"Retry-After": str(retry_after_s)},
        )

    async def flush(self) -> None:
        """One ``load_shed`` line per reason shed since the last flush."""
        windows, self._windows = self._windows, {}
        for reason, window in sorted(windows.items()):
            self.log.warning(
                "load_shed", code=self.spec.code, reason=reason, count=window.count, request_ids=window.request_ids
            )
