"""The Ingress's Prometheus series (Ray Serve metrics): requests by route and status, latency, streams."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator

from ray.serve.metrics import Counter, Histogram

from deployments.speech.errors import ApiError

LATENCY_BOUNDARIES_MS = [50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]


class IngressMetrics:
    def __init__(self):
        self._requests = Counter("parakeet_requests", "Transcription requests", tag_keys=("route", "status"))
        self._latency = Histogram("parakeet_request_latency_ms", "End-to-end request latency",
                                  boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route",))
        self._streams = Counter("parakeet_streams", "WebSocket streams by outcome", tag_keys=("outcome",))

    @contextlib.asynccontextmanager
    async def request(self, route: str) -> AsyncIterator[None]:
        """Count the request under its final status (a client error's, 500 for anything unexpected)."""
        started = time.perf_counter()
        status = "500"
        try:
            yield
            status = "200"
        except ApiError as exc:
            status = str(exc.status)
            raise
        except asyncio.CancelledError:
            status = "499"  # the client went away
            raise
        finally:
            self._requests.inc(tags={"route": route, "status": status})
            self._latency.observe((time.perf_counter() - started) * 1000, tags={"route": route})

    def stream_ended(self, outcome: str) -> None:
        self._streams.inc(tags={"outcome": outcome})
