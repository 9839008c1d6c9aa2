"""Check, before ``serve run``, what would make start-up fail: ``python -m deployments.preflight serve_config.yaml``.

``serve run <config>`` submits the application and then waits forever, so a model that cannot be had would only
show as a failed application in Ray's status. ``make serve`` runs this first: the same settings (the file's
``args`` with the ``PARAKEET_*`` environment on top) and the same model checks as ``build_app``, and a non-zero exit
with one line when something is wrong.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from deployments.app import check_model_sources, config_application
from deployments.speech.settings import AppSettings


def main(argv: list[str] | None = None) -> None:
    path = Path((argv or sys.argv[1:] or ["serve_config.yaml"])[0])
    if not path.is_file():
        raise SystemExit(f"No config file {path}: run from the repository's root, or pass the path to one.")
    application = config_application(yaml.safe_load(path.read_text()))
    try:
        settings = AppSettings(**application.get("args", {}))
    except ValidationError as exc:
        error = exc.errors()[0]
        raise SystemExit(f"Invalid setting {'.'.join(map(str, error['loc']))} in {path} or PARAKEET_*: "
                         f"{error['msg']}") from None
    check_model_sources(settings)
    print(f"preflight: {', '.join(f'{m.id} ({m.source})' for m in settings.served_models)} can be loaded")


if __name__ == "__main__":
    main()
