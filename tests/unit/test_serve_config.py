"""serve_config.yaml is a valid Ray Serve config whose args are valid AppSettings; build_app composes the graph."""

from pathlib import Path

import yaml

from deployments.speech.settings import AppSettings

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def test_serve_config_is_valid(monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.delenv("PARAKEET_MODEL", raising=False)
    raw = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(raw)
    app = schema.applications[0]
    assert app.name == "parakeet" and app.route_prefix == "/" and app.import_path == "deployments.app:build_app"
    settings = AppSettings(**app.args)
    assert settings.model == "nvidia/parakeet-tdt-0.6b-v2" and settings.batch_ms == 15
    assert settings.vad.min_silence_duration_ms == 30 and settings.vad.speech_pad_ms == 120
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"Ingress", "Segmenter", "Transcriber", "Aligner"}
    transcriber = deployments["Transcriber"]
    # every segment of several long files in flight fits in the replica (no backlog in the callers' routers)
    assert transcriber.max_ongoing_requests >= 1024 >= settings.max_batch_size
    assert transcriber.user_config == {"max_batch_size": 4, "batch_wait_timeout_s": 0.015}


def test_build_app_on_a_cpu_machine_asks_for_no_gpu(monkeypatch):
    from deployments import app as app_module

    monkeypatch.setattr(app_module, "cluster_gpus", lambda: 0.0)
    assert app_module.transcriber_gpus(AppSettings()) == 0.0
    monkeypatch.setattr(app_module, "cluster_gpus", lambda: 8.0)
    assert app_module.transcriber_gpus(AppSettings()) == 1.0
    assert app_module.transcriber_gpus(AppSettings(device="cpu")) == 0.0
    assert app_module.transcriber_gpus(AppSettings(transcriber_gpus=0.5)) == 0.5
    application = app_module.build_app({"model": "/models/x.nemo"})
    assert application is not None
    transcriber = application._bound_deployment.init_args[1]  # Ingress.bind(segmenter, transcriber, ...)
    assert transcriber._bound_deployment.max_ongoing_requests >= 1024
