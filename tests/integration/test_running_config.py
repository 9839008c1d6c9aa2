"""The running app's deployment options are serve_config.yaml's (the tests and the bench run what production runs)."""

import pytest

from deployments.app import shipped_deployment_options

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
