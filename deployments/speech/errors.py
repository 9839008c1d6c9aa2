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


class Conflict(ApiError):
    """The resource is not in a state that allows this (a job's result before the job completed)."""

    status = 409
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


class ReplicaGone(Overloaded):
    """The replica working on the call died (a crash, a node lost): 503, safe to retry."""

    def __init__(self):
        super().__init__("A worker of the service failed while handling this request; retry shortly.",
                         retry_after_s=5, code="replica_failed")


class ModelUnavailable(Overloaded):
    """A model that cannot be loaded right now: 503, retry (or ask for another model)."""

    def __init__(self, message: str):
        super().__init__(message, retry_after_s=10, code="model_unavailable")


class InternalError(ApiError):
    status = 500
    type = "server_error"


class Unauthorized(ApiError):
    status = 401
    type = "invalid_request_error"


class TooBusy(ApiError):
    """Admission's answer when the in-flight work is at its bound: 429 at once, not a queue."""

    status = 429
    type = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: int, code: str = "server_busy"):
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class RealtimeError(InvalidRequest):
    """A Realtime client event that cannot be applied: answered by an ``error`` event naming ``param``."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None):
        super().__init__(message, code=code)
        self.param = param


class KeytermError(InvalidRequest):
    """Keyterms the service cannot take (empty, too long, too many, a boost out of range, a term the model cannot
    spell): 400 naming the term or the limit; ``param`` is the field (a stream's error event carries it)."""

    def __init__(self, message: str, param: str = "keyterms"):
        super().__init__(message, code="invalid_keyterms")
        self.param = param
