"""The running app's deployment options are serve_config.yaml's, behind the front door make serve puts before it (the
tests and the bench run what production runs)."""

from urllib.parse import urlparse

import httpx
import pytest

from deployments.app import shipped_deployment_options
from tests.helpers import listening_processes

pytestmark = pytest.mark.integration


def subset(running: dict, wanted: dict) -> dict:
    return {key: running.get(key) for key in wanted}


def test_the_running_app_has_the_files_deployment_options(digits_app):
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    running = {name: d["deployment_config"] for name, d in details["applications"]["parakeet"]["deployments"].items()}
    shipped = shipped_deployment_options()
    assert set(running) == set(shipped) == {"Ingress", "Segmenter", "Transcriber", "Aligner"}
    for name, options in shipped.items():
        for key, value in options.items():
            if isinstance(value, dict):  # autoscaling_config and ray_actor_options come back with Ray's defaults added
                assert subset(running[name][key], value) == value, (name, key)
            else:
                assert running[name][key] == value, (name, key)
    # and the Transcriber applied its user_config (the batching it reports is the file's)
    stats = digits_app.deployment("Transcriber").stats.remote().result()
    assert stats["batching"] == shipped["Transcriber"]["user_config"]


def test_clients_connect_to_the_front_door_make_serve_chooses(local_ray, digits_app):
    """HAProxy (the default where a binary is found, as on CI): the Serve port is HAProxy's, and it forwards to the
    Ingress replica's own server, not through Serve's proxy actor. PARAKEET_INGRESS=proxy runs the suite through the
    proxy, and then the port is the proxy actor's."""
    import psutil

    from deployments.front_door import choose

    assert local_ray.front_door == choose()
    port = urlparse(local_ray.serve_url).port
    listeners = listening_processes(port)
    actors = {" ".join(p.info["cmdline"] or []).split("ray::", 1)[-1].split(" ")[0]
              for p in psutil.process_iter(["cmdline"]) if "ray::" in " ".join(p.info["cmdline"] or [])}
    if local_ray.front_door == "haproxy":
        assert listeners == {"haproxy"}, listeners  # (a ProxyActor runs too: Serve's fallback, on a port of its own)
        assert "HAProxyManager" in actors, actors
    else:
        assert listeners and "haproxy" not in listeners, listeners
        assert "ProxyActor" in actors and "HAProxyManager" not in actors, actors
    assert httpx.get(digits_app.url + "/healthz", timeout=10).status_code == 200
