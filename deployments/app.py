"""The one composition point: ``build_app(args)`` wires Ingress -> Segmenter / Transcriber / Aligner.

``serve run serve_config.yaml`` calls it with the file's ``args``; ``PARAKEET_*`` environment variables override
them (see deployments/speech/settings.py). Deployment-level options (replicas, autoscaling, health checks,
``max_queued_requests``, ``user_config``) can be overridden per deployment in serve_config.yaml as usual.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from deployments.aligner import Aligner
from deployments.ingress import Ingress
from deployments.segmenter import Segmenter
from deployments.speech.settings import AppSettings
from deployments.transcriber import TRANSCRIBER_MAX_ONGOING, Transcriber

log = logging.getLogger("ray.serve")


def cluster_gpus() -> float:
    """GPUs in the Ray cluster this app is being deployed to (0 when Ray is not up or has none)."""
    try:
        import ray

        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        return float(ray.cluster_resources().get("GPU", 0))
    except Exception:  # noqa: BLE001 - no cluster to ask: assume CPU
        return 0.0


def transcriber_gpus(settings: AppSettings) -> float:
    if settings.transcriber_gpus != "auto":
        return float(settings.transcriber_gpus)
    if settings.device == "cpu":
        return 0.0
    return 1.0 if cluster_gpus() >= 1 else 0.0


def build_app(args: dict[str, Any] | None = None) -> Application:
    settings = AppSettings(**(args or {}))
    gpus = transcriber_gpus(settings)
    log.info("Parakeet app: model=%s, transcriber GPUs per replica=%s", settings.model, gpus)
    transcriber = Transcriber.options(
        ray_actor_options={"num_gpus": gpus, "num_cpus": settings.transcriber_cpus},
        user_config={"max_batch_size": settings.max_batch_size,
                     "batch_wait_timeout_s": settings.batch_ms / 1000},
        # Batches only fill if a replica may hold more requests than one batch (see TRANSCRIBER_MAX_ONGOING).
        max_ongoing_requests=max(TRANSCRIBER_MAX_ONGOING, settings.max_batch_size * 4),
    ).bind(settings)
    return Ingress.bind(Segmenter.bind(settings.vad), transcriber, Aligner.bind(), settings)
