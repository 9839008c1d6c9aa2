"""``make serve``: the preflight, a one-node Ray with its Prometheus metrics on a known port, the app of a config
file on it, until Ctrl-C or SIGTERM, then Serve and that Ray shut down, every process it started with them (and
nothing else).

    python -m deployments.launch serve_config.yaml --metrics-port 8080

``serve run serve_config.yaml`` serves the same app, but cannot choose Ray's metrics port (Ray picks one at random
on each start), and ``ray start`` + ``serve run`` + ``ray stop`` would stop every Ray on the machine on the way
out. The config's ``http_options``, ``proxy_location`` and application (its ``args`` and ``deployments``) apply as
``serve run`` applies them.

``--ingress`` (default: $PARAKEET_INGRESS, else auto): what takes connections on the config's port, HAProxy in front
of the Ingress replicas' own servers or Ray Serve's proxy actor (deployments/front_door.py); auto is HAProxy where a
binary is found (ray[serve] brings one on Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import threading
from pathlib import Path

import psutil
import yaml

from deployments import front_door, preflight
from deployments.app import APP_NAME, compose_app, config_application, deployment_options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="serve_config.yaml")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus text at :PORT/metrics")
    parser.add_argument("--ingress", choices=front_door.CHOICES, default=None,
                        help=f"haproxy or Serve's proxy (default: ${front_door.CHOICE_VARIABLE}, else auto)")
    args = parser.parse_args(argv)
    preflight.main([args.config])
    try:  # before ray.init: Ray's processes read it from the environment they start with
        ingress, haproxy_dir = front_door.prepare(args.ingress)
    except ValueError as exc:
        raise SystemExit(f"--ingress: {exc}") from None

    import ray
    from ray import serve

    config = yaml.safe_load(Path(args.config).read_text())
    application = config_application(config)
    stop = threading.Event()
    # a Ray of its own ("local"), even when another runs on this machine: Ctrl-C stops this one only
    ray.init(address="local", _metrics_export_port=args.metrics_port, namespace="serve", log_to_driver=True)
    # after ray.init: Ray's core worker installs its own SIGTERM handler, which aborts the process (exit 134,
    # nothing shut down); these replace it, so SIGTERM stops the service as Ctrl-C does
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(proxy_location=config.get("proxy_location", "EveryNode"),
                    http_options=config.get("http_options", {}))
        serve.run(compose_app(application.get("args", {}), deployment_options(application)), name=APP_NAME,
                  route_prefix=application.get("route_prefix", "/"), blocking=False)
        http = config.get("http_options", {})
        print(f"Serving on http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)} (demo: /demo) through "
              f"{'HAProxy' if ingress == 'haproxy' else 'Ray Serve proxy'}; metrics on :{args.metrics_port}/metrics. "
              "Ctrl-C stops it.", flush=True)
        stop.wait()
        print("Stopping...", flush=True)
    finally:
        started = _descendants()  # Ray's processes, the agents its raylet started included, before they are orphaned
        serve.shutdown()
        ray.shutdown()
        _reap(started)
        if haproxy_dir:
            shutil.rmtree(haproxy_dir, ignore_errors=True)


def _descendants() -> list:
    return psutil.Process().children(recursive=True)


def _reap(processes: list, grace_s: float = 5.0) -> None:
    """End what ``ray.shutdown`` left behind. A SIGTERM to this process alone (systemd, Docker, Kubernetes) reaches
    none of Ray's, and its DashboardAgent and RuntimeEnvAgent ignore SIGTERM once their raylet is gone: whatever
    still runs after the grace gets SIGKILL."""
    alive = [p for p in processes if p.is_running()]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)


if __name__ == "__main__":
    sys.exit(main())
