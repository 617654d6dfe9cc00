"""The one table from controller outcomes to HTTP statuses, and OpenWhisk's error body."""
from __future__ import annotations

import json

import grpc
from aiohttp import web

# gRPC status of a failed controller call -> HTTP status.
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.OUT_OF_RANGE: 413,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
}

# An activation's response.statusCode -> HTTP status of a blocking invoke (OpenWhisk's):
# success, application error, action developer error, whisk internal error.
# A blocking invoke's status by the activation's statusCode. A whisk internal error (e.g. the
# invoker running it died) is 502 with the activation in the body, like the action's own
# failures, rather than OpenWhisk's 500: the caller gets the record saying what happened.
ACTIVATION_TO_HTTP: dict[int, int] = {0: 200, 1: 502, 2: 502, 3: 502}

def error_response(status: int, message: str, code: str) -> web.Response:
    body = json.dumps({"error": message, "code": code})
    headers = {"WWW-Authenticate": 'Basic realm="whisk rest service"'} if status == 401 else None
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


# Statuses whose gRPC details are the transport's words, not the controller's: a fixed message.
FIXED_MESSAGES = {
    500: "An internal error occurred.",
    503: "The server is currently unavailable (because it is overloaded or down for maintenance).",
}


def from_status(status_code: grpc.StatusCode, details: str, code: str) -> web.Response:
    status = GRPC_TO_HTTP.get(status_code, 500)
    message = FIXED_MESSAGES.get(status) or details or "An internal error occurred."
    return error_response(status, message, code)


def from_grpc(exc: grpc.aio.AioRpcError, code: str) -> web.Response:
    return from_status(exc.code(), exc.details(), code)
