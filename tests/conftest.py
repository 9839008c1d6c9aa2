"""Shared fixtures: the project's test models and a real Ray Serve app on a local (CPU) Ray cluster."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES, free_port

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("PARAKEET_MODEL", None)  # the tests choose their models explicitly

DIGITS_MODEL = FIXTURES / "digits.nemo"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight tiny Parakeet-architecture model (configs/models/tiny.yaml) saved as .nemo."""
    from bench.models import build_random_nemo

    return build_random_nemo("tiny", tmp_path_factory.mktemp("tiny") / "tiny.nemo")


@pytest.fixture(scope="session")
def digits_model() -> Path:
    assert DIGITS_MODEL.is_file(), "tests/fixtures/digits.nemo is missing (make test-model)"
    return DIGITS_MODEL


@dataclass
class LocalRay:
    """A Ray cluster on this machine: the head node (where the shared apps run) plus whatever nodes a test adds."""
    cluster: Any  # ray.cluster_utils.Cluster
    serve_url: str
    metrics_url: str  # the head node's Prometheus endpoint
    front_door: str  # "haproxy" or "proxy" (deployments/front_door.py): what clients connect to


@pytest.fixture(scope="session")
def local_ray() -> LocalRay:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from deployments.front_door import prepare

    # what make serve runs (PARAKEET_INGRESS=proxy runs the suite through Serve's proxy), in files of its own
    front_door, haproxy_dir = prepare()
    metrics_port = free_port()
    # Ray's own multi-node test cluster: one head now, more nodes where a test needs them (test_multinode).
    # Logical CPUs: every replica of the graph must be schedulable on a 2-core CI machine. Metrics are reported
    # every second (Ray's default is 10 s) so the scrape test need not wait.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 8, "include_dashboard": False, "object_store_memory": 2 * 2**30,
        "metrics_export_port": metrics_port, "_system_config": {"metrics_report_interval_ms": 1000}})
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    port = free_port()
    # One HTTP proxy (or HAProxy), on the head: those of the other nodes would all bind the same port of this machine.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    yield LocalRay(cluster, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", front_door)
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()
    if haproxy_dir:
        shutil.rmtree(haproxy_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(local_ray) -> str:
    return local_ray.serve_url


@dataclass
class ServedApp:
    url: str
    name: str

    def deployment(self, name: str):
        from ray import serve

        return serve.get_deployment_handle(name, app_name=self.name)

    def handle(self):
        from ray import serve

        return serve.get_app_handle(self.name)


def run_app(ray_cluster: str, deployment_options: dict | None = None, name: str = "parakeet",
            route_prefix: str = "/", **args) -> ServedApp:
    """The app as build_app makes it: serve_config.yaml's deployment options unless ``deployment_options``
    overrides some. Another ``name`` and ``route_prefix`` run it beside the shared digits app."""
    from ray import serve

    from deployments.app import compose_app

    # each app's jobs in a folder of its own, never in the user's ~/.cache
    args.setdefault("jobs", {}).setdefault("storage", tempfile.mkdtemp(prefix=f"parakeet-jobs-{name}-"))
    serve.run(compose_app(args, deployment_options), name=name, route_prefix=route_prefix, blocking=False)
    return ServedApp(url=ray_cluster + route_prefix.rstrip("/"), name=name)


def stop_app(name: str = "parakeet") -> None:
    from ray import serve

    serve.delete(name)


@pytest.fixture(scope="module")
def module_app(request, ray_cluster):
    """The one way a test module serves an app of its own: ``module_app(model=..., deployment_options=...)`` runs it
    named after the module (``test_jobs.py``: ``jobs`` at ``/jobs``), beside the shared apps, and deletes it when
    the module is done; so modules pass in any order. Calling it again redeploys (a restart)."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")

    def serve_app(deployment_options: dict | None = None, **args) -> ServedApp:
        return run_app(ray_cluster, deployment_options, name=name, route_prefix=f"/{name}", **args)

    serve_app.app_name = name
    yield serve_app
    from ray import serve

    if name in serve.status().applications:
        stop_app(name)


@pytest.fixture(scope="session")
def digits_app(ray_cluster, digits_model):
    """The graph serving the trained digits model; shared by the fidelity and streaming modules."""
    served = run_app(ray_cluster, model=str(digits_model), stream={"max_streams": 20, "partial_interval_ms": 1000})
    yield served
    stop_app()


@pytest.fixture(scope="session")
def shipped_digits_app(ray_cluster, digits_model):
    """serve_config.yaml's options exactly, with the digits model, beside the shared app: for the tests that kill
    its replicas (recovery) or measure their memory (soak), one deployment for both."""
    served = run_app(ray_cluster, name="shipped", route_prefix="/shipped", model=str(digits_model))
    yield served
    stop_app("shipped")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_report_header(config) -> str:
    return "gpu tests (the GPU path): " + ("run, CUDA is present" if _cuda() else "deselected, no CUDA here")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` (the GPU path: CUDA graphs, bf16, NeMo's Triton biasing kernel) belong to machines with
    CUDA: elsewhere they are deselected, as the header says, not skipped (CPU CI has no GPU by design, and a skip
    there would read as a test that could not set up)."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests and not _cuda():
        config.hook.pytest_deselected(items=gpu_tests)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
