"""serve_config.yaml is a valid Ray Serve config whose args are valid AppSettings and whose deployment options are
the only ones: build_app applies exactly them (the running app's options are checked in tests/integration)."""

from pathlib import Path

import pytest
import yaml

from deployments.speech.settings import AppSettings, BatchSettings
from tests.helpers import bound_options

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def test_serve_config_is_valid(monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.delenv("PARAKEET_MODEL", raising=False)
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    app = schema.applications[0]
    assert app.name == "parakeet" and app.route_prefix == "/" and app.import_path == "deployments.app:build_app"
    settings = AppSettings(**app.args)
    assert settings.model == "nvidia/parakeet-tdt-0.6b-v2"
    assert settings.vad.min_silence_duration_ms == 30 and settings.vad.speech_pad_ms == 120
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"Ingress", "Segmenter", "Transcriber", "Aligner"}
    transcriber = deployments["Transcriber"]
    batching = BatchSettings(**transcriber.user_config)
    assert batching == BatchSettings(max_batch_size=4, batch_ms=15)  # the seed's
    # every segment of several long files in flight fits in the replica (no backlog in the callers' routers)
    assert transcriber.max_ongoing_requests >= 1024 >= batching.max_batch_size
    # the proxy never queues a probe behind requests admission would refuse: every one reaches a replica
    ingress = deployments["Ingress"]
    admitted = settings.admission.max_requests + settings.stream.max_streams
    assert ingress.max_ongoing_requests >= 4 * admitted, (ingress.max_ongoing_requests, admitted)


def test_the_proxy_never_ends_a_live_socket():
    """Serve's proxy counts http_options.request_timeout_s from a request's start, for a WebSocket too (its whole
    life, idle or not), so a value there would end every live stream, and an agent's idle socket, that long after it
    opened. Voice-agent clients keep an idle socket for minutes; files are bounded by the app's own timeout."""
    from ray.serve._private.http_util import parse_request_timeout_header
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    assert schema.http_options.request_timeout_s is None
    assert parse_request_timeout_header({}, schema.http_options.request_timeout_s) is None  # what the proxy uses
    assert AppSettings(**schema.applications[0].args).request_timeout_s <= 600


@pytest.fixture
def model_file(tmp_path) -> str:
    path = tmp_path / "x.nemo"
    path.write_bytes(b"")
    return str(path)


def test_build_app_applies_the_files_options_and_nothing_else(monkeypatch, model_file):
    from deployments import app as app_module

    monkeypatch.setattr(app_module, "cluster_gpus", lambda: 0.0)
    shipped = app_module.shipped_deployment_options()
    # built the way `serve run serve_config.yaml` builds it (Serve checks the builder's signature, then calls it)
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    bound = bound_options(call_user_app_builder_with_args_if_necessary(app_module.build_app, {"model": model_file}))
    for name, options in shipped.items():
        config = bound[name]._deployment_config
        for key, value in options.items():
            if key == "ray_actor_options":
                assert {k: bound[name].ray_actor_options[k] for k in value} == value, name
            elif key == "autoscaling_config":
                running = config.autoscaling_config.model_dump()
                assert {k: running[k] for k in value} == value, name
            else:
                assert getattr(config, key) == value, (name, key)
    # a caller's override changes one value and keeps the file's others
    overridden = bound_options(app_module.compose_app({"model": model_file},
                                                      {"Transcriber": {"user_config": {"batch_ms": 50}}}))
    assert overridden["Transcriber"]._deployment_config.user_config == {"max_batch_size": 4, "batch_ms": 50}


def test_transcriber_resources_come_from_the_settings(monkeypatch, model_file):
    from deployments import app as app_module

    monkeypatch.setattr(app_module, "cluster_gpus", lambda: 0.0)
    assert app_module.transcriber_gpus(AppSettings()) == 0.0
    monkeypatch.setattr(app_module, "cluster_gpus", lambda: 8.0)
    assert app_module.transcriber_gpus(AppSettings()) == 1.0
    assert app_module.transcriber_gpus(AppSettings(device="cpu")) == 0.0
    assert app_module.transcriber_gpus(AppSettings(transcriber_gpus=0.5)) == 0.5
    bound = bound_options(app_module.build_app({"model": model_file, "transcriber_cpus": 2}))
    assert bound["Transcriber"].ray_actor_options == {"num_gpus": 1.0, "num_cpus": 2}


def test_a_model_that_cannot_be_had_stops_start_up_with_one_line(monkeypatch, tmp_path):
    from deployments import app as app_module

    monkeypatch.setattr(app_module, "cluster_gpus", lambda: 0.0)
    with pytest.raises(SystemExit) as missing_file:
        app_module.build_app({"model": str(tmp_path / "missing.nemo")})
    message = str(missing_file.value)
    assert "missing.nemo: no such file" in message and "PARAKEET_MODEL=" in message and "\n" not in message
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit, match="not in the local cache and HF_HUB_OFFLINE is set"):
        app_module.build_app({"models": [{"id": "v3", "source": "nvidia/parakeet-tdt-0.6b-v3"}]})


@pytest.mark.parametrize("source, local", [("/missing-dir", True), ("./x", True), ("~/m.nemo", True),
                                           ("models/x.nemo", True), ("nvidia/parakeet-tdt-0.6b-v2", False),
                                           ("stt_en_fastconformer", False)])
def test_the_preflight_and_the_loader_agree_on_what_is_a_local_file(monkeypatch, source, local):
    """One rule (parakeet_defaults.is_local_model) for both: a missing local path is a missing file for each."""
    from deployments import app as app_module
    from deployments.speech import parakeet
    from deployments.speech.parakeet_defaults import is_local_model

    assert is_local_model(source) is local
    if local:
        assert "no such file" in app_module.model_source_problem(source)
        with pytest.raises(parakeet.ModelLoadError, match="tried local .nemo file"):
            parakeet.load_nemo_model(source, "cpu")


def test_autoscaling_can_never_take_what_a_dead_transcribers_replacement_needs(monkeypatch):
    """The sizing rule: every CPU deployment at its max_replicas plus one Transcriber fits a 2-core machine."""
    monkeypatch.delenv("PARAKEET_MODEL", raising=False)
    from deployments.app import shipped_deployment_options

    raw = yaml.safe_load(CONFIG.read_text())["applications"][0]
    settings = AppSettings(**raw["args"])
    cpu_stages = {name: options for name, options in shipped_deployment_options().items() if name != "Transcriber"}
    at_most = sum(options["autoscaling_config"]["max_replicas"] * options["ray_actor_options"]["num_cpus"]
                  for options in cpu_stages.values())
    assert at_most + settings.transcriber_cpus <= 2.0, at_most


def test_make_serve_stops_at_once_on_a_model_that_cannot_be_had(tmp_path):
    """The preflight `make serve` runs before `serve run` (which would wait forever on a failed application)."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "PARAKEET_MODEL": str(tmp_path / "missing.nemo")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "deployments.preflight", str(CONFIG)], env=env,
                            capture_output=True, text=True, timeout=60, cwd=CONFIG.parent)
    assert result.returncode != 0 and time.monotonic() - started < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.nemo: no such file" in lines[0] and "PARAKEET_MODEL=" in lines[0]
    env["PARAKEET_MODEL"] = str(Path(__file__).resolve().parents[1] / "fixtures" / "digits.nemo")
    ok = subprocess.run([sys.executable, "-m", "deployments.preflight", str(CONFIG)], env=env,
                        capture_output=True, text=True, timeout=60, cwd=CONFIG.parent)
    assert ok.returncode == 0 and "can be loaded" in ok.stdout


def test_a_missing_config_file_or_wheelhouse_is_one_clear_line(tmp_path):
    from deployments import preflight
    from tools import wheelhouse

    with pytest.raises(SystemExit, match="No config file .*missing.yaml"):
        preflight.main([str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit, match="is not a wheelhouse: build one with `make wheelhouse`"):
        wheelhouse.install_offline(tmp_path)


def test_a_gpu_count_that_cannot_be_read_is_said_loudly(monkeypatch, caplog):
    import logging

    import ray

    from deployments import app

    def broken():
        raise ConnectionError("GCS unreachable")

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", broken)
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        assert app.cluster_gpus() == 0.0
    assert any(r.levelno == logging.ERROR and "GCS unreachable" in r.getMessage() and "PARAKEET_TRANSCRIBER_GPUS"
               in r.getMessage() for r in caplog.records)
