"""Aligner deployment: token timings -> word and segment timestamps. Called only when timestamps are requested."""

from __future__ import annotations

import time

from ray import serve

from deployments.metrics import AlignerMetrics
from deployments.speech.schemas import Segment, SegmentTokens, Word
from deployments.speech.timestamps import align


@serve.deployment
class Aligner:
    def __init__(self):
        self.calls = 0
        self.align_seconds = 0.0
        self._metrics = AlignerMetrics()
        self._stages = self._metrics.stages

    def align(self, pieces: list[tuple[SegmentTokens, float, float]], duration: float
              ) -> tuple[list[Word], list[Segment]]:
        self.calls += 1
        self._metrics.calls.inc()
        started = time.perf_counter()
        try:
            return align(pieces, duration)
        finally:
            elapsed = time.perf_counter() - started
            self.align_seconds += elapsed
            self._stages.observe("align", elapsed)

    def stats(self) -> dict:
        return {"calls": self.calls, "align_seconds": self.align_seconds}

    def ready(self) -> bool:
        return True
