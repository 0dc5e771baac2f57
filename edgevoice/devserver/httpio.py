"""HTTP answers of the devserver's handshake and control endpoint (JSON bodies)."""

from __future__ import annotations

import email.utils
import http
import json
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Response

from .schema import JsonObj


def request_key(headers: Headers) -> str | None:
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("api-key")
    if api_key and api_key.strip():
        return api_key.strip()
    return None


def error_body(message: str, code: str | None) -> JsonObj:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "code": code,
            "param": None,
        }
    }


def http_response(status: int, body: Any, extra: dict[str, str] | None = None) -> Response:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    payload = (json.dumps(body) + "\n").encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(payload))),
            ("Content-Type", "application/json"),
        ]
    )
    for name, value in (extra or {}).items():
        headers[name] = value
    return Response(status, phrase, headers, payload)
