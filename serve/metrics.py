"""Prometheus metrics of one server (its own registry, no global state), in the text format:

    llava_mini_requests_total{endpoint, status}      counter   answered requests by HTTP status
    llava_mini_queue_length                          gauge     requests waiting for a slot (being prepared or queued)
    llava_mini_active_slots / llava_mini_slots       gauge     KV-cache slots decoding / in the pool
    llava_mini_generated_tokens_total                counter   tokens generated
    llava_mini_tokens_per_second                     gauge     generated tokens per second over the last `window` s
    llava_mini_time_to_first_token_seconds           histogram request received -> first token
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class TokenRate:
    """Tokens per second over a sliding window; `add` may be called from any thread."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.window, self.clock = window, clock
        self._events: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._events.append((self.clock(), n))

    def rate(self) -> float:
        now = self.clock()
        with self._lock:
            while self._events and self._events[0][0] < now - self.window:
                self._events.popleft()
            return sum(n for _, n in self._events) / self.window


class _EngineCollector(Collector):
    def __init__(self, metrics: "ServerMetrics"):
        self.m = metrics

    def collect(self):
        engine = self.m.engine
        yield GaugeMetricFamily("llava_mini_queue_length", "Requests waiting for a slot (being prepared or queued)",
                                value=engine.queued + self.m.preparing)
        yield GaugeMetricFamily("llava_mini_active_slots", "KV-cache slots decoding a request", value=engine.active)
        yield GaugeMetricFamily("llava_mini_slots", "KV-cache slots in the pool", value=engine.max_batch)
        yield CounterMetricFamily("llava_mini_generated_tokens", "Tokens generated", value=engine.tokens_generated)
        yield GaugeMetricFamily("llava_mini_tokens_per_second",
                                f"Generated tokens per second over the last {self.m.rate.window:g} s",
                                value=self.m.rate.rate())


class ServerMetrics:
    """The server's metrics; `preparing` counts requests between arrival and the engine queue."""

    def __init__(self, engine, window: float = 10.0):
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        self.preparing = 0
        self.rate = TokenRate(window)
        self.requests = Counter("llava_mini_requests", "Answered requests by endpoint and HTTP status",
                                ["endpoint", "status"], registry=self.registry)
        self.ttft = Histogram("llava_mini_time_to_first_token_seconds", "Request received -> first generated token",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(self))

    def text(self) -> bytes:
        return generate_latest(self.registry)
