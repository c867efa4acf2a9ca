"""The server's front door, as plain ASGI middleware (so streamed responses pass through as they
are produced): API keys on /v1/*, a request body size limit, and a cap on concurrent requests.

- keys: `serve.api_keys` and the environment variable MODELWORKS_API_KEYS (comma-separated);
  when any is set, /v1/* needs `Authorization: Bearer <key>` (401 otherwise); /health, /metrics,
  /tokenize, /detokenize and the web page stay open.
- body: more than `serve.max_body_bytes` is a 413 (checked on Content-Length and while reading).
- concurrency: past `serve.max_concurrent_requests` in-flight POSTs, a 429 with Retry-After; a
  streamed response counts until its last byte is sent.
"""

from __future__ import annotations

import hmac
import json
import os


def _error(status: int, message: str, type_: str, code: str | None, headers=()):
    body = json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), *headers],
    }
    return start, {"type": "http.response.body", "body": body}


def api_keys(cfg) -> list[str]:
    """The accepted keys: `serve.api_keys` and MODELWORKS_API_KEYS (comma-separated)."""
    env = os.environ.get("MODELWORKS_API_KEYS", "")
    return [k for k in [*cfg.api_keys, *env.split(",")] if k.strip()]


class Guard:
    def __init__(self, app, cfg, metrics=None) -> None:
        self.app, self.cfg, self.metrics = app, cfg, metrics
        self.keys = api_keys(cfg)
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = {}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        async def reply(status_code, message, type_, code=None, headers=()):
            for m in _error(status_code, message, type_, code, headers):
                await send_counted(m)

        try:
            if path.startswith("/v1/") and self.keys and not self._authorised(scope):
                return await reply(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    "authentication_error",
                    "invalid_api_key",
                )
            if scope["method"] != "POST":
                return await self.app(scope, receive, send_counted)
            limit = self.cfg.max_body_bytes
            headers = dict(scope["headers"])
            length = headers.get(b"content-length", b"0")
            if not length.isdigit() or int(length) > limit:
                return await reply(
                    413, f"request body over serve.max_body_bytes={limit}", "invalid_request_error"
                )
            body, more = b"", True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    return await reply(
                        413,
                        f"request body over serve.max_body_bytes={limit}",
                        "invalid_request_error",
                    )
            if self.in_flight >= self.cfg.max_concurrent_requests:
                return await reply(
                    429,
                    f"more than serve.max_concurrent_requests="
                    f"{self.cfg.max_concurrent_requests} requests in flight; retry shortly",
                    "rate_limit_error",
                    "too_many_requests",
                    [(b"retry-after", b"1")],
                )
            replayed = False

            async def replay():  # the body we read, then the real channel (disconnects)
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            self.in_flight += 1
            try:
                await self.app(scope, replay, send_counted)
            finally:
                self.in_flight -= 1
        finally:
            if self.metrics is not None and "code" in status:
                known = path.startswith("/v1/") or path in ("/tokenize", "/detokenize", "/health")
                self.metrics.on_http(path if known else "other", status["code"])

    def _authorised(self, scope) -> bool:
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return any(hmac.compare_digest(token.strip().encode(), k.encode()) for k in self.keys)
