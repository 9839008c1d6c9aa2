"""Errors a client can act on, each with its HTTP status and OpenAI-style type (no Ray, no FastAPI)."""

from __future__ import annotations


class ApiError(Exception):
    """Rendered as ``{"error": {"message", "type", "code"}}`` with ``status``."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMedia(ApiError):
    status = 415
    type = "invalid_request_error"


class Overloaded(ApiError):
    status = 503
    type = "server_overloaded"

    def __init__(self, message: str, retry_after_s: int = 1, code: str | None = "overloaded"):
        super().__init__(message, code, {"Retry-After": str(retry_after_s)})


class InternalError(ApiError):
    status = 500
    type = "server_error"
