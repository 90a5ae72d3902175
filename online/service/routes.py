"""The HTTP edge: routes, authentication, request ids, JSON errors, access logs and request metrics."""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from online.service.errors import HTTP_CODES, RateLimited, ServiceError, Unauthorized, UnsupportedMediaType
from online.service.event_routes import MAX_EVENTS_BODY_BYTES, register_event_routes
from online.service.observability import REQUEST_ID_HEADER, request_id_from
from online.service.page_routes import describe_items, register_page_routes
from online.service.rate_limit import RateLimiter
from online.service.service import RecService
from online.service.validation import parse_rec_request

log = logging.getLogger("recsys.online.http")
API_KEY_HEADER = "X-API-Key"
MAX_BODY_BYTES = 4096
JSON_TYPE = "application/json"


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype=JSON_TYPE)


def error_response(code: str, message: str, status: int) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status)


def register_routes(app: Flask, service: RecService) -> None:
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    api_key = service.settings.api_key.get_secret_value() if service.settings.api_key else ""
    settings = service.settings
    limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst) if settings.rate_limit_rps else None

    @app.before_request
    def start_request() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.userid = None
        g.degraded = []

    def require_key() -> None:
        if api_key and not hmac.compare_digest(request.headers.get(API_KEY_HEADER, "").encode(), api_key.encode()):
            raise Unauthorized(f"send a valid API key in the {API_KEY_HEADER} header")
        if limiter is not None:
            client = request.headers.get(API_KEY_HEADER) or request.remote_addr or "unknown"
            wait_s = limiter.retry_after(client)
            if wait_s:
                service.metrics.child("rejected", "rate_limit").inc()
                raise RateLimited(f"more than {settings.rate_limit_rps:g} requests per second; retry later", wait_s)

    @app.post("/ml/rec")
    def recommend() -> Response:
        require_key()
        if request.mimetype != JSON_TYPE:
            raise UnsupportedMediaType(f"send the body as {JSON_TYPE}, not {request.mimetype or 'no content type'}")
        req = parse_rec_request(request.get_data(cache=False), settings.default_size, settings.max_size)
        g.userid = req.userid
        rec = service.recommend(req.userid, req.size, explain=req.explain)
        g.degraded = rec.degraded
        body = rec.to_json()
        g.timings_ms = body["timings_ms"]  # in the access log: where a slow answer spent its time
        describe_items(body["item_list"], service.catalog.current(), req.fields)
        return json_response(body)

    register_page_routes(app, service, require_key)

    register_event_routes(app, service, json_response)

    @app.get("/health")
    def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready")
    def ready() -> Response:
        is_ready, report = service.readiness()
        return json_response({"ready": is_ready, **report}, 200 if is_ready else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(service.metrics.exposition(), mimetype="text/plain; version=0.0.4")

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError) -> Response:
        response = error_response(exc.code, exc.message, exc.status)
        if exc.status == 503:
            response.headers["Retry-After"] = "1"
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        return error_response(HTTP_CODES.get(status, "http_error"), _http_message(exc), status)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error", extra={"request_id": g.get("request_id")})
        return error_response("internal_error", "an unexpected error; the request id is in the logs", 500)

    @app.after_request
    def finish_request(response: Response) -> Response:
        request_id = g.get("request_id") or request_id_from(None)
        response.headers[REQUEST_ID_HEADER] = request_id
        _record(service, response, request_id)
        return response


def _http_message(exc: HTTPException) -> str:
    if exc.code == 405:
        return f"{request.method} is not allowed on {request.path}"
    if exc.code == 404:
        return f"no route {request.path}; the API is described at GET /openapi.json"
    if exc.code == 413:
        limit = MAX_EVENTS_BODY_BYTES if request.path == "/ml/events" else MAX_BODY_BYTES
        return f"the body is larger than {limit} bytes"
    return exc.description or exc.name


def _record(service: RecService, response: Response, request_id: str) -> None:
    endpoint = request.url_rule.rule if request.url_rule is not None else "other"
    status = response.status_code
    if status < 400:
        outcome = "degraded" if g.get("degraded") else "ok"
    else:
        outcome = "client_error" if status < 500 else ("unavailable" if status == 503 else "error")
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    service.metrics.requests.labels(endpoint, outcome).inc()
    service.metrics.latency.labels(endpoint, outcome).observe(elapsed)
    if endpoint in ("/metrics", "/health"):
        return
    log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "status": status,
            "outcome": outcome,
            "latency_ms": round(elapsed * 1000, 3),
            "userid": g.get("userid"),
            "degraded": g.get("degraded") or [],
            **({"timings_ms": g.timings_ms} if g.get("timings_ms") else {}),
        },
    )
