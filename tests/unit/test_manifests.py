"""The cluster manifests, the container image and the Grafana dashboard agree with what they deploy: the RayService
embeds serve_config.yaml itself, every node group offers what the deployments placed on it ask for, the image
installs through the Makefile, and the dashboard charts every series the service exports and no other."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
METRICS_PORT = re.search(r"^METRICS_PORT \?= (\d+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


@pytest.fixture
def needs(monkeypatch, tmp_path) -> dict:
    """What each deployment asks of a node, built as a cluster builds it (PARAKEET_TRANSCRIBER_GPUS=1, as every
    manifest sets): per replica and at max_replicas."""
    from deployments import app as app_module
    from tests.helpers import bound_options

    model = tmp_path / "m.nemo"
    model.write_bytes(b"")
    monkeypatch.setenv("PARAKEET_TRANSCRIBER_GPUS", "1")
    monkeypatch.setenv("PARAKEET_MODEL", str(model))
    bound = bound_options(app_module.build_app({}))
    return {name: {"cpus": d.ray_actor_options.get("num_cpus", 1), "gpus": d.ray_actor_options.get("num_gpus", 0),
                   "max_replicas": d._deployment_config.autoscaling_config.max_replicas}
            for name, d in bound.items()}


def cpu_stages_at_max(needs: dict) -> float:
    return sum(n["cpus"] * n["max_replicas"] for name, n in needs.items() if name != "Transcriber")


def rayservice() -> list[dict]:
    return list(yaml.safe_load_all((CONFIGS / "kuberay" / "rayservice.yaml").read_text()))


def test_the_rayservice_embeds_serve_config_yaml_itself():
    service = rayservice()[0]
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((ROOT / "serve_config.yaml").read_text()), \
        "copy serve_config.yaml (without its comments) into serveConfigV2"
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == __import__("ray").__version__


def test_the_rayservice_groups_offer_what_their_deployments_need(needs):
    cluster = rayservice()[0]["spec"]["rayClusterConfig"]
    head, groups = cluster["headGroupSpec"], {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert head["rayStartParams"]["num-cpus"] == "0", "no replicas on the head"
    transcriber, gpu, cpu = needs["Transcriber"], groups["gpu"], groups["cpu"]
    # one Transcriber per GPU pod, and nothing else fits beside it
    assert float(gpu["rayStartParams"]["num-gpus"]) == transcriber["gpus"] == 1
    assert float(gpu["rayStartParams"]["num-cpus"]) == transcriber["cpus"]
    assert gpu["maxReplicas"] >= transcriber["max_replicas"]
    # the CPU group holds every CPU deployment at its max_replicas
    assert cpu["maxReplicas"] * float(cpu["rayStartParams"]["num-cpus"]) >= cpu_stages_at_max(needs)
    images = set()
    for spec in (head, gpu, cpu):
        assert spec["rayStartParams"]["metrics-export-port"] == METRICS_PORT
        container = spec["template"]["spec"]["containers"][0]
        images.add(container["image"])
        limits = container["resources"]["limits"]
        assert float(limits["cpu"]) >= float(spec["rayStartParams"]["num-cpus"])
        assert int(limits.get("nvidia.com/gpu", 0)) == int(spec["rayStartParams"].get("num-gpus", 0))
        assert {"name": "PARAKEET_TRANSCRIBER_GPUS", "value": "1"} in container["env"]
        assert any(p["containerPort"] == int(METRICS_PORT) and p["name"] == "metrics" for p in container["ports"])
    assert images == {"parakeet-serve:latest"}
    monitor = rayservice()[1]
    assert monitor["kind"] == "PodMonitor" and monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_the_cluster_launcher_deploys_serve_config_yaml_on_nodes_sized_for_it(needs):
    launcher = yaml.safe_load((CONFIGS / "cluster-launcher.yaml").read_text())
    assert launcher["file_mounts"]["/app/serve_config.yaml"] == "./serve_config.yaml"
    assert any("serve deploy serve_config.yaml" in c for c in launcher["head_start_ray_commands"])
    for commands in (launcher["head_start_ray_commands"], launcher["worker_start_ray_commands"]):
        assert any(f"--metrics-export-port={METRICS_PORT}" in c for c in commands)
    types = launcher["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    transcriber = needs["Transcriber"]
    assert types["gpu"]["resources"] == {"CPU": transcriber["cpus"], "GPU": transcriber["gpus"]}
    assert types["gpu"]["max_workers"] >= transcriber["max_replicas"]
    assert types["cpu"]["max_workers"] * types["cpu"]["resources"]["CPU"] >= cpu_stages_at_max(needs)
    assert launcher["docker"]["image"] == "parakeet-serve:latest"
    assert "-e PARAKEET_TRANSCRIBER_GPUS=1" in launcher["docker"]["run_options"]


def test_the_image_installs_exactly_what_the_makefile_installs():
    dockerfile = (CONFIGS / "docker" / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-ubuntu24\.04$", dockerfile, re.M)
    runs = " ".join(re.findall(r"^RUN (.+?)(?<!\\)$", dockerfile, re.M | re.S))
    assert "pip install" not in runs, "everything is installed by `make install` (the same pins)"
    install = re.search(r"make install (.+?)(?:&&|$)", runs).group(1).split()
    assert "EXTRAS=" in install, "serving only"
    python = next(arg.split("=", 1)[1] for arg in install if arg.startswith("PYTHON="))
    assert python in re.search(r"^PYTHON \?= .*$", makefile, re.M).group(0), "a Python the Makefile supports"
    assert f"apt-get install -y --no-install-recommends {python} {python}-venv" in dockerfile
    # the torch pin is the Makefile's (not overridden by the image)
    assert "TORCH=" not in runs and re.search(r"^TORCH \?= torch==[\d.]+$", makefile, re.M)
    assert "-m deployments.launch serve_config.yaml --metrics-port $(METRICS_PORT)" in makefile


def exported_series() -> set[str]:
    """The Prometheus names Ray gives each parakeet_* metric the service defines."""
    suffixes = {"Counter": ["_total"], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"]}
    names = set()
    for path in (ROOT / "deployments").glob("*.py"):
        for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"(parakeet_\w+)\"", path.read_text()):
            names |= {f"ray_{name}{suffix}" for suffix in suffixes[kind]}
    return names


def test_the_dashboard_charts_every_exported_series_and_only_those():
    dashboard = json.loads((CONFIGS / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\bray_parakeet_\w+", expr)}
    exported = exported_series()
    assert len(exported) > 20 and used <= exported, used - exported
    charted = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert charted == {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported}
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
