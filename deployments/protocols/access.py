"""Who may call the service: the optional API key (HTTP and WebSocket alike) and CORS, as one ASGI middleware.

Ray Serve freezes (pickles) the FastAPI app when the Ingress class is decorated, so the middleware is added to the
app at import time and reads this replica's settings, which the Ingress sets (``configure_access``) when it starts.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from dataclasses import dataclass, field

from starlette.middleware.cors import CORSMiddleware

from deployments.protocols.http_api import error_response
from deployments.speech.errors import ApiError, Unauthorized

OPEN_PATHS = ("/healthz", "/demo")  # liveness probes carry no key; the demo page holds none (it asks the user)
WS_POLICY_VIOLATION = 1008
# Browsers cannot set headers on a WebSocket: the key may come as a subprotocol, OpenAI's convention for its
# Realtime API in browsers (``new WebSocket(url, ["realtime", "openai-insecure-api-key.<key>"])``).
KEY_SUBPROTOCOL = "openai-insecure-api-key."


@dataclass
class AccessSettings:
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)


ACCESS = AccessSettings()


def configure_access(api_key: str | None, cors_origins: list[str]) -> None:
    """Set this replica's access rules. (A function of this module, so it changes the ``ACCESS`` the middleware
    reads: Ray pickles the Ingress class by value, and a global it named directly would be a copy.)"""
    ACCESS.api_key = api_key
    ACCESS.cors_origins = list(cors_origins)


class AccessMiddleware:
    def __init__(self, app):
        self.app = app
        self._cors: CORSMiddleware | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and ACCESS.cors_origins:
            if self._cors is None:  # built on first use: the origins are this replica's settings
                self._cors = CORSMiddleware(self._guard, allow_origins=ACCESS.cors_origins, allow_methods=["*"],
                                            allow_headers=["*"], expose_headers=["X-Request-Id", "Retry-After"])
            await self._cors(scope, receive, send)
            return
        await self._guard(scope, receive, send)

    async def _guard(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or ACCESS.api_key is None or _open(scope) \
                or _authorized(scope, ACCESS.api_key):
            await self.app(scope, receive, send)
            return
        error = Unauthorized("A valid API key is required: send it as 'Authorization: Bearer <key>' (or 'Token "
                             "<key>', Deepgram's form) or 'X-API-Key: <key>'.", code="invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})
        if scope["type"] == "http":
            await error_response(error)(scope, receive, send)
            return
        await receive()  # websocket.connect
        if _denials(scope) and _path(scope) == "/v1/listen":  # Deepgram clients expect the HTTP status
            await _send_denial(send, error)
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(
            {"type": "error", "message": error.message, "code": error.code,
             "error": {"type": error.type, "code": error.code, "message": error.message}})})
        await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})


def _path(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _open(scope) -> bool:
    return _path(scope) in OPEN_PATHS


def _denials(scope) -> bool:
    """The server can answer a WebSocket upgrade with an HTTP response (ASGI's denial-response extension)."""
    return "websocket.http.response" in (scope.get("extensions") or {})


async def _send_denial(send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), *[(k.lower().encode(), v.encode())
                                                         for k, v in error.headers.items()]]
    await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


async def deny_websocket(websocket, error: ApiError) -> None:
    """Refuse an upgrade with ``error``'s HTTP status where the server can (a 4xx at the upgrade tells a client not
    to retry); elsewhere accept, send the error and close 1008."""
    if _denials(websocket.scope):
        await websocket.send_denial_response(error_response(error))
        return
    await websocket.accept()
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"type": "Error", "description": error.message,
                                              "message": error.message, "variant": error.code or "error"}))
        await websocket.close(WS_POLICY_VIOLATION)


def _authorized(scope, api_key: str) -> bool:
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    scheme, _, token = headers.get("authorization", "").partition(" ")
    presented = token.strip() if scheme.lower() in ("bearer", "token") else headers.get("x-api-key", "")
    if not presented and scope["type"] == "websocket":
        presented = next((p[len(KEY_SUBPROTOCOL):] for p in scope.get("subprotocols", [])
                          if p.startswith(KEY_SUBPROTOCOL)), "")
    return bool(presented) and hmac.compare_digest(presented.encode(), api_key.encode())


def chosen_subprotocol(scope) -> str | None:
    """The subprotocol a WebSocket is accepted with: a browser that offered any must get one of them back. The
    first offered that is not the key, else the key's (it is the client's own)."""
    offered = list(scope.get("subprotocols", []))
    return next((p for p in offered if not p.startswith(KEY_SUBPROTOCOL)), offered[0] if offered else None)
