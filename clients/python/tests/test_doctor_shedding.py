"""F35 / issue 19: the doctor reads both services' /metrics and reports a replica that sheds
load as a warning with a hint, without failing the checklist."""

from __future__ import annotations

from typing import TypeVar

import httpx
import pytest

from tether_client.doctor.report import DoctorReport, StepResult, StepWarning
from tether_client.doctor.shedding import Shedding, parse_metrics, shedding_step, verdict
from tether_client.http import AuthClient, SessionHttp

SESSION_SHEDDING = """\
# HELP tether_load_shedding 1 while the signal is over its limit
# TYPE tether_load_shedding gauge
tether_load_shedding{signal="loop_lag"} 1.0
tether_load_shedding{signal="handshakes"} 0.0
tether_load_shedding{signal="appender_queue"} 1.0
# HELP tether_load_shed_total Requests refused by admission control
# TYPE tether_load_shed_total counter
tether_load_shed_total{reason="connect"} 412.0
tether_load_shed_total{reason="ingest"} 37.0
tether_load_shed_total{reason="prompt"} 0.0
tether_load_shed_total_created{reason="connect"} 1.7e+09
tether_ws_connections_open 120.0
"""

AUTH_SHED_EARLIER = """\
# TYPE tether_load_shed_total counter
tether_load_shed_total{reason="token_issue"} 5.0
tether_db_pool_connections{state="idle"} 4.0
"""

QUIET = """\
tether_load_shedding{signal="loop_lag"} 0.0
tether_load_shed_total{reason="connect"} 0.0
"""


def test_F35_metrics_text_is_parsed_with_labels_and_escapes() -> None:
    samples = parse_metrics(
        '# HELP x y\nweird{a="q\\"uote",b="back\\\\slash",c="new\\nline"} 2.5 1700000000\nplain 3\nbroken{ x\n'
    )
    assert [(s.name, dict(s.labels), s.value) for s in samples] == [
        ("weird", {"a": 'q"uote', "b": "back\\slash", "c": "new\nline"}, 2.5),
        ("plain", {}, 3.0),
    ]


def test_F35_shedding_names_the_signals_over_their_limit_and_counts_sheds_by_reason() -> None:
    session = Shedding.from_metrics("session", SESSION_SHEDDING)
    assert session.over == ["appender_queue", "loop_lag"]
    assert dict(session.sheds) == {"connect": 412, "ingest": 37, "prompt": 0}  # _created is not a count
    assert session.total == 449
    assert session.describe() == (
        "session: shedding now (over the limit: appender_queue, loop_lag); 449 shed since start "
        "(by reason: connect 412, ingest 37)"
    )
    auth = Shedding.from_metrics("auth-token", AUTH_SHED_EARLIER)
    assert (auth.over, auth.total) == ([], 5)
    assert "not shedding now; 5 shed since start (by reason: token_issue 5)" in auth.describe()


def test_F35_a_shedding_replica_is_a_warning_with_a_hint_to_scale_out_or_raise_the_limit() -> None:
    with pytest.raises(StepWarning) as info:
        verdict([Shedding.from_metrics("auth-token", QUIET), Shedding.from_metrics("session", SESSION_SHEDDING)])
    result = info.value.result("shedding", "load shedding (/metrics)")
    assert result.status == "warning"
    assert result.code == "load_shedding"
    assert "session: shedding now (over the limit: appender_queue, loop_lag)" in result.detail
    assert "auth-token: not shedding now; 0 shed since start" in result.detail
    assert result.hint.startswith("session is refusing work right now")
    assert "Scale out" in result.hint
    assert "raise the limit" in result.hint
    with pytest.raises(StepWarning, match="5 shed since start") as earlier:
        verdict([Shedding.from_metrics("auth-token", AUTH_SHED_EARLIER)])
    assert earlier.value.hint.startswith("a replica refused work since it started")


def test_F35_no_shedding_or_no_shedding_metrics_passes() -> None:
    assert verdict([Shedding.from_metrics("session", QUIET)]) == (
        "session: not shedding now; 0 shed since start (by reason: none)"
    )
    older = verdict([Shedding.from_metrics("auth-token", "tether_db_pool_connections 1\n")])
    assert older == "auth-token: no shedding metrics (this version does not shed)"


def test_F35_a_warning_does_not_fail_the_report_and_is_rendered_as_one() -> None:
    report = DoctorReport()
    report.steps.append(StepResult("auth_healthz", "auth-token /healthz", "ok", "alive"))
    warning = StepWarning("session: shedding now", hint="scale out", code="load_shedding")
    report.steps.append(warning.result("shedding", "load shedding (/metrics)"))
    assert report.ok
    assert report.to_json()["warnings"] == ["shedding"]
    assert report.to_json()["failed_step"] is None
    assert report.summary() == "doctor: all 2 checks passed (warning: load shedding (/metrics))"
    assert report.steps[1].render() == "! load shedding (/metrics) — session: shedding now\n    → scale out"


Client = TypeVar("Client", AuthClient, SessionHttp)


def _client(cls: type[Client], body: str, status: int = 200) -> Client:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        assert "authorization" not in request.headers  # metrics need no key; the key is not sent
        return httpx.Response(status, text=body, headers={"content-type": "text/plain; version=0.0.4"})

    return cls("http://127.0.0.1:1", "tk_secret", client=httpx.AsyncClient(transport=httpx.MockTransport(answer)))


@pytest.mark.trio
async def test_F35_the_step_scrapes_both_services() -> None:
    auth, session = _client(AuthClient, AUTH_SHED_EARLIER), _client(SessionHttp, SESSION_SHEDDING)
    with pytest.raises(StepWarning) as info:
        await shedding_step(auth, session)
    assert info.value.detail.startswith("auth-token: not shedding now; 5 shed since start")
    assert "session: shedding now" in info.value.detail
    quiet_auth, unreadable = _client(AuthClient, QUIET), _client(SessionHttp, "no", status=404)
    with pytest.raises(StepWarning) as missing:
        await shedding_step(quiet_auth, unreadable)
    assert missing.value.code == "metrics_unavailable"
    assert "session: cannot read http://127.0.0.1:1/metrics" in missing.value.detail
