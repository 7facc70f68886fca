"""Prometheus metrics of the session service (F41)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections_open = Gauge("tether_ws_connections_open", "Open WebSocket connections", registry=registry)
        self.connects = Counter(
            "tether_ws_connects_total",
            "Connection attempts by outcome (ready or refused:<code>)",
            ["outcome"],
            registry=registry,
        )
        self.closes = Counter(
            "tether_ws_closes_total", "Closes by close code and reason", ["code", "reason"], registry=registry
        )
        self.frames_in = Counter("tether_ws_frames_in_total", "Frames received by type", ["type"], registry=registry)
        self.frames_out = Counter("tether_ws_frames_out_total", "Frames sent by type", ["type"], registry=registry)
        self.published = Counter(
            "tether_events_published_total", "Events appended to the log by source", ["source"], registry=registry
        )
        self.delivered = Counter("tether_events_delivered_total", "Event frames sent to sockets", registry=registry)
        self.resumes = Counter("tether_resumes_total", "INITs carrying resume_from", registry=registry)
        self.replayed = Counter(
            "tether_replayed_events_total", "Events sent from the log during catch-up", registry=registry
        )
        self.rate_limited = Counter(
            "tether_rate_limited_total", "Rate-limit hits by limit", ["limit"], registry=registry
        )
        self.slow_consumers = Counter(
            "tether_slow_consumers_total", "Connections closed as slow consumers", registry=registry
        )
        self.subscribers = Gauge("tether_fanout_subscribers", "Registered fan-out subscribers", registry=registry)
        self.feeds = Gauge("tether_fanout_feeds", "Projects with a live feed on this replica", registry=registry)
        self.listen_reconnects = Gauge(
            "tether_listen_reconnects", "LISTEN connection re-establishments", registry=registry
        )
        self.agent_tasks = Gauge("tether_agent_tasks", "Agent answers in progress", registry=registry)

    def observe(self, *, subscribers: int, feeds: int, listen_reconnects: int, agent_tasks: int) -> None:
        """Refresh the gauges that are read from live state at scrape time."""
        self.subscribers.set(subscribers)
        self.feeds.set(feeds)
        self.listen_reconnects.set(listen_reconnects)
        self.agent_tasks.set(agent_tasks)
