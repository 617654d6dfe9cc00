"""Typed errors shared by every role.

The controller raises these; they travel over gRPC as status codes with the
message as details, and the edge turns the status code into an HTTP status
through the one table in edge/errors.py. Messages are OpenWhisk's wording where
OpenWhisk has one, since clients show them to users.
"""
from __future__ import annotations

import grpc


class SquallError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_message = "An internal error occurred."

    def __init__(self, message: str | None = None):
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        return str(self)


class BadRequest(SquallError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_message = "The request content was malformed."


class Unauthenticated(SquallError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_message = "The supplied authentication is invalid."


class Forbidden(SquallError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_message = "The supplied authentication is not authorized to access this resource."


class NotFound(SquallError):
    code = grpc.StatusCode.NOT_FOUND
    default_message = "The requested resource does not exist."


class Conflict(SquallError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_message = "resource already exists"


class PayloadTooLarge(SquallError):
    code = grpc.StatusCode.OUT_OF_RANGE
    default_message = "The request content was too large."


class TooManyRequests(SquallError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_message = "Too many requests in the last minute."


class Unavailable(SquallError):
    code = grpc.StatusCode.UNAVAILABLE
    default_message = "The server is currently unavailable (because it is overloaded or down for maintenance)."
