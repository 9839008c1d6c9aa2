"""The one composition point: ``build_app(args)`` (``compose_app`` with overrides) wires Ingress -> Segmenter / Transcriber / Aligner.

Every deployment option (replicas, autoscaling, queue bounds, health checks, CPUs, the Transcriber's batching
``user_config``) is written once, in serve_config.yaml's ``deployments:``. ``serve run serve_config.yaml`` applies
them itself; ``build_app`` applies the same file's values too, so the tests and the benchmark (which call it
directly) run exactly what production runs. The application's ``args`` are ``AppSettings`` (``PARAKEET_*``
environment variables override them); only the Transcriber's GPUs and CPUs come from them, because "auto" depends
on the cluster.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application

from deployments.aligner import Aligner
from deployments.ingress import Ingress
from deployments.segmenter import Segmenter
from deployments.speech.parakeet_defaults import is_local_model
from deployments.speech.settings import AppSettings
from deployments.transcriber import Transcriber

log = logging.getLogger("ray.serve")
SERVE_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.yaml"
APP_NAME = "parakeet"
DeploymentOptions = dict[str, dict[str, Any]]


def config_application(config: dict) -> dict:
    """This app's entry in a Serve config file's ``applications``."""
    return next(a for a in config["applications"] if a["name"] == APP_NAME)


def deployment_options(application: dict) -> DeploymentOptions:
    """Each deployment's options in a config file's application, by deployment name."""
    return {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in application.get("deployments", [])}


def shipped_deployment_options(path: Path = SERVE_CONFIG) -> DeploymentOptions:
    """Each deployment's options from the config file's application, by deployment name."""
    if not path.is_file():  # an install without the repository's config: Ray's own config (if any) decides
        log.warning("%s not found: deployments run with Ray's defaults unless a config file sets them", path)
        return {}
    return deployment_options(config_application(yaml.safe_load(path.read_text())))


def merged_options(base: DeploymentOptions, overrides: DeploymentOptions | None) -> DeploymentOptions:
    """``overrides`` on top of ``base``, one level into dict-valued options (``autoscaling_config`` ...)."""
    merged = {name: dict(options) for name, options in base.items()}
    for name, options in (overrides or {}).items():
        target = merged.setdefault(name, {})
        for key, value in options.items():
            target[key] = {**target[key], **value} if isinstance(value, dict) and isinstance(target.get(key),
                                                                                            dict) else value
    return merged


def cluster_gpus() -> float:
    """GPUs in the Ray cluster this app is being deployed to. A count that cannot be read is said loudly (an ERROR
    naming the reason and the setting that avoids the guess) before the app falls back to the CPU: a GPU cluster
    served on the CPU is fifty times slower, and nobody should learn that from the latency."""
    try:
        import ray

        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        return float(ray.cluster_resources().get("GPU", 0))
    except Exception as exc:  # noqa: BLE001 - any failure: say it, then assume no GPU
        log.error("transcriber_gpus is 'auto' but the Ray cluster's GPUs could not be read (%s: %s): serving on "
                  "the CPU. Set transcriber_gpus (PARAKEET_TRANSCRIBER_GPUS=1) to use GPUs without asking Ray.",
                  type(exc).__name__, exc)
        return 0.0


def transcriber_gpus(settings: AppSettings) -> float:
    if settings.transcriber_gpus != "auto":
        return float(settings.transcriber_gpus)
    if settings.device == "cpu":
        return 0.0
    return 1.0 if cluster_gpus() >= 1 else 0.0


def check_model_sources(settings: AppSettings) -> None:
    """Stop at once, with one line, when a model cannot be had: a ``.nemo`` path that is not a file, or an HF id that
    is neither in the local cache nor reachable (otherwise Ray would retry the replicas for minutes)."""
    for spec in settings.served_models:
        problem = model_source_problem(spec.source)
        if problem:
            raise SystemExit(f"Cannot serve model {spec.id!r}: {problem}. Download it where there is network "
                             "(huggingface-cli download nvidia/parakeet-tdt-0.6b-v2) or set "
                             "PARAKEET_MODEL=/path/to/model.nemo (PARAKEET_MODELS for several).")


def model_source_problem(source: str) -> str | None:
    if is_local_model(source):
        return None if Path(source).expanduser().is_file() else f"tried the local file {source}: no such file"
    if "/" not in source:  # a NeMo (NGC) pretrained name: found, or not, when the replica loads it
        return None
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError

    try:
        huggingface_hub.snapshot_download(source, local_files_only=True)
        return None
    except Exception:  # noqa: BLE001 - not in the cache: ask the hub (quickly) whether it can be downloaded
        pass
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return f"tried Hugging Face model {source}: not in the local cache and HF_HUB_OFFLINE is set"
    try:
        huggingface_hub.HfApi().model_info(source, timeout=10)
    except HfHubHTTPError as exc:
        return f"tried Hugging Face model {source}: the hub answered {exc.response.status_code if exc.response else exc}"
    except Exception as exc:  # noqa: BLE001 - no network, DNS, timeout: one line either way
        return f"tried Hugging Face model {source}: not in the local cache and the hub is unreachable " \
               f"({type(exc).__name__})"
    return None


def build_app(args: dict[str, Any]) -> Application:
    """The application builder that ``serve run`` / ``serve deploy`` call with the config's ``args`` (Serve requires
    exactly one parameter)."""
    return compose_app(args)


def compose_app(args: dict[str, Any] | None = None, deployment_options: DeploymentOptions | None = None
                ) -> Application:
    """The application. ``deployment_options`` (tests, the benchmark) override the config file's values."""
    settings = AppSettings(**(args or {}))
    check_model_sources(settings)
    gpus = transcriber_gpus(settings)
    log.info("Parakeet app: model=%s, transcriber GPUs per replica=%s", settings.model, gpus)
    resources = {"Transcriber": {"ray_actor_options": {"num_gpus": gpus, "num_cpus": settings.transcriber_cpus}}}
    options = merged_options(merged_options(resources, shipped_deployment_options()), deployment_options)
    return Ingress.options(**options.get("Ingress", {})).bind(
        Segmenter.options(**options.get("Segmenter", {})).bind(settings.vad),
        Transcriber.options(**options.get("Transcriber", {})).bind(settings),
        Aligner.options(**options.get("Aligner", {})).bind(),
        settings)
