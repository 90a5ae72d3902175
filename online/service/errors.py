"""Typed errors of the service, each with the HTTP status and the code that the edge answers with.

Every error response is ``{"error": {"code": ..., "message": ...}}``. Client mistakes are 4xx with a
message that says what was wrong; 503 means "not ready yet / try again"; 500 is kept for real bugs.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class MalformedJson(ServiceError):
    status, code = 400, "malformed_json"


class InvalidBody(ServiceError):
    status, code = 400, "invalid_body"


class MissingField(ServiceError):
    status, code = 422, "missing_field"


class UnknownField(ServiceError):
    status, code = 422, "unknown_field"


class InvalidField(ServiceError):
    status, code = 422, "invalid_field"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class RateLimited(ServiceError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class Unavailable(ServiceError):
    status, code = 503, "backend_unavailable"


# Werkzeug's HTTP errors (404, 405, 413, ...) get these codes at the edge
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
}
