"""The online recommendation service: ``POST /ml/rec``, ``GET /health``, ``GET /ready``, ``GET /metrics``.

Development run: ``python online/main/s1_server.py`` (Flask's server on ``RECSYS_HOST:RECSYS_PORT``).
Production run: ``gunicorn 'online.main.s1_server:create_app()'`` (``make serve``, the compose service).
Settings come from ``RECSYS_*`` environment variables and the optional ``RECSYS_CONFIG`` YAML file; a
bad value stops the server with a message that names it. The backends are chosen by
``RECSYS_PROFILE`` (embedded: in-process; compose: Redis, Elasticsearch, Feast server, Triton).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python online/main/s1_server.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flask import Flask

from data_exchange_center.settings import Settings, SettingsError, load_settings
from online.service.observability import configure_logging
from online.service.routes import register_routes
from online.service.service import SERVICE_KEY, RecService

log = logging.getLogger("recsys.online.server")


def create_app(settings: Settings | None = None, *, backends: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings (validated), backend clients (once per worker process), routes.

    Published versions load in the background; ``/ready`` says when every backend can answer, and
    ``/ml/rec`` answers 503 until then. ``backends`` maps a role to a ready-made adapter (tests).
    """
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    app = Flask("recsys_online")
    service = RecService(settings, backends)
    app.extensions[SERVICE_KEY] = service
    register_routes(app, service)
    service.start()  # background version checks: the published versions start loading
    log.info("service created", extra={"profile": settings.profile, "data_dir": str(settings.data_dir)})
    return app


def service_of(app: Flask) -> RecService:
    return app.extensions[SERVICE_KEY]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=None, help="listen address (default: RECSYS_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default: RECSYS_PORT or 5000)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = load_settings(overrides)
    except SettingsError as exc:
        print(f"s1_server: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    app.run(host=settings.host, port=settings.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
