"""The server's Prometheus metrics: its own registry, engine gauges, the tokens/s window."""
from __future__ import annotations

import types

from serve.metrics import ServerMetrics, TokenRate


def test_token_rate_over_a_sliding_window():
    now = [100.0]
    rate = TokenRate(window=10.0, clock=lambda: now[0])
    rate.add(30)
    now[0] = 105.0
    rate.add(20)
    assert rate.rate() == 5.0
    now[0] = 112.0  # the first 30 left the window
    assert rate.rate() == 2.0


def test_text_exposition_reads_the_engine():
    engine = types.SimpleNamespace(queued=3, active=2, max_batch=8, tokens_generated=41)
    m = ServerMetrics(engine)
    m.preparing = 1
    m.requests.labels("/v1/chat/completions", "429").inc()
    m.ttft.observe(0.02)
    text = m.text().decode()
    for line in ['llava_mini_requests_total{endpoint="/v1/chat/completions",status="429"} 1.0',
                 "llava_mini_queue_length 4.0", "llava_mini_active_slots 2.0", "llava_mini_slots 8.0",
                 "llava_mini_generated_tokens_total 41.0",
                 'llava_mini_time_to_first_token_seconds_bucket{le="0.025"} 1.0']:
        assert line in text, line
    assert "python_gc" not in text  # a registry of its own, not the process-global one
