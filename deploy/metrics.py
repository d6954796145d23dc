"""Prometheus metrics of deploy/server.py, served at GET /metrics in the text exposition format.

One registry per app (not prometheus_client's global one), so several apps in one process (the
tests) keep apart. Counters and histograms are updated by the request handlers; gauges read the
engine when scraped.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # no `*_created` series: they double the page and nobody graphs them

# seconds: from a few ms (tiny models) to a long answer queued behind a full batch
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The server's metrics. `engine` needs `in_flight`, `waiting`, `kv_cache_usage` and
    `tokens_per_second()`; `admission` needs `in_use` and `size`."""

    def __init__(self, engine, admission):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("sqft_requests", "HTTP requests answered, by route and status code "
                                "(route \"other\" for unknown paths, so the label set stays bounded).",
                                ("route", "code"), registry=r)
        self.cancelled = Counter("sqft_requests_cancelled",
                                 "Admitted requests whose client went away before the answer ended.",
                                 registry=r)
        self.prompt_tokens = Counter("sqft_prompt_tokens", "Prompt tokens of admitted requests.",
                                     registry=r)
        self.generated_tokens = Counter("sqft_generated_tokens",
                                        "Tokens generated (streamed or returned).", registry=r)
        self.ttft = Histogram("sqft_time_to_first_token_seconds",
                              "From admission to the first generated token.",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("sqft_request_duration_seconds",
                                  "From admission to the end of the answer (generation requests).",
                                  buckets=_LATENCY_BUCKETS, registry=r)
        Gauge("sqft_requests_in_flight", "Admitted generation requests not yet answered in full.",
              registry=r).set_function(lambda: admission.in_use)
        Gauge("sqft_queue_capacity", "Admitted requests at most (--queue-size); more get 503.",
              registry=r).set(admission.size)
        Gauge("sqft_queue_depth", "Requests in the engine that have not produced a token yet "
                                  "(waiting for a place in the batch or for their prefill).",
              registry=r).set_function(lambda: engine.waiting)
        Gauge("sqft_engine_requests", "Requests inside the continuous-batching engine.",
              registry=r).set_function(lambda: engine.in_flight)
        Gauge("sqft_kv_cache_usage_ratio", "Fraction of the KV cache in use after the last step.",
              registry=r).set_function(lambda: engine.kv_cache_usage)
        Gauge("sqft_generated_tokens_per_second", "Generated tokens per second over the last 10 s.",
              registry=r).set_function(engine.tokens_per_second)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
