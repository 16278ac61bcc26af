"""Prometheus metrics in the text exposition format (written by hand: prometheus-client is not a
dependency): request counts by endpoint and status, tokens, wei charged, latency sums and a
histogram, in-flight requests, re-routes of refused pipelines, and settlement state."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)
        self.charge_wei = 0
        self.inflight = 0
        self.reroutes = 0
        self.latency_sum = 0.0
        self.latency_count = 0
        self.latency_buckets = [0] * len(BUCKETS)

    def observe(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            if seconds is not None:
                self.latency_sum += seconds
                self.latency_count += 1
                for i, b in enumerate(BUCKETS):
                    if seconds <= b:
                        self.latency_buckets[i] += 1

    def served(self, tokens_in: int, tokens_out: int, charge: int) -> None:
        with self._lock:
            self.tokens["prompt"] += tokens_in
            self.tokens["completion"] += tokens_out
            self.charge_wei += charge

    def rerouted(self, _operator: str) -> None:
        """A pipeline refused a request before its first token and it was routed again."""
        with self._lock:
            self.reroutes += 1

    def render(self, settlement: dict[str, int]) -> str:
        with self._lock:
            lines = ["# HELP veriplex_gateway_requests_total HTTP requests by endpoint and status.",
                     "# TYPE veriplex_gateway_requests_total counter"]
            for (ep, st), n in sorted(self.requests.items()):
                lines.append(f'veriplex_gateway_requests_total{{endpoint="{ep}",status="{st}"}} {n}')
            lines += ["# HELP veriplex_gateway_tokens_total Tokens served by kind.",
                      "# TYPE veriplex_gateway_tokens_total counter"]
            for kind in ("prompt", "completion"):
                lines.append(f'veriplex_gateway_tokens_total{{kind="{kind}"}} {self.tokens[kind]}')
            lines += ["# HELP veriplex_gateway_charge_wei_total Wei charged for served requests.",
                      "# TYPE veriplex_gateway_charge_wei_total counter",
                      f"veriplex_gateway_charge_wei_total {self.charge_wei}",
                      "# HELP veriplex_gateway_inflight_requests Requests being generated now.",
                      "# TYPE veriplex_gateway_inflight_requests gauge",
                      f"veriplex_gateway_inflight_requests {self.inflight}",
                      "# HELP veriplex_gateway_reroutes_total Requests routed again after a "
                      "stage refused them (NOT_ASSIGNED) before the first token.",
                      "# TYPE veriplex_gateway_reroutes_total counter",
                      f"veriplex_gateway_reroutes_total {self.reroutes}",
                      "# HELP veriplex_gateway_request_seconds Completed request latency.",
                      "# TYPE veriplex_gateway_request_seconds histogram"]
            for b, n in zip(BUCKETS, self.latency_buckets, strict=True):
                lines.append(f'veriplex_gateway_request_seconds_bucket{{le="{b}"}} {n}')
            lines += [f'veriplex_gateway_request_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                      f"veriplex_gateway_request_seconds_sum {self.latency_sum}",
                      f"veriplex_gateway_request_seconds_count {self.latency_count}",
                      "# HELP veriplex_gateway_settlement Settlement store counts by state.",
                      "# TYPE veriplex_gateway_settlement gauge"]
            for k, v in sorted(settlement.items()):
                lines.append(f'veriplex_gateway_settlement{{state="{k}"}} {v}')
        return "\n".join(lines) + "\n"
