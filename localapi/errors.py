"""Google's JSON error shape and the errors the local API raises.

An :class:`ApiError` becomes an HTTP response
``{"error": {"code", "message", "errors": [{"message", "domain", "reason"}], "status"}}``
which ``google.api_core.exceptions.from_http_response`` maps to the exception
class of the HTTP status (400 BadRequest, 403 Forbidden, 404 NotFound,
409 Conflict, 412 PreconditionFailed, 429 TooManyRequests,
500 InternalServerError, 503 ServiceUnavailable).
"""
from __future__ import annotations

from typing import Any

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",  # not a google.rpc code; Google's ESF answers 405 similarly
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}

#: The ``httpErrorMessage`` Google puts on a failed Operation.
HTTP_ERROR_MESSAGES = {
    400: "BAD REQUEST",
    403: "FORBIDDEN",
    404: "NOT FOUND",
    409: "CONFLICT",
    412: "PRECONDITION FAILED",
    500: "INTERNAL SERVER ERROR",
}

#: The ``error.errors[].code`` of a failed Operation, by HTTP status.
OPERATION_ERROR_CODES = {
    400: "INVALID_USAGE",
    403: "QUOTA_EXCEEDED",
    404: "RESOURCE_NOT_FOUND",
    409: "RESOURCE_ALREADY_EXISTS",
    412: "CONDITION_NOT_MET",
    500: "INTERNAL_ERROR",
}


#: google.rpc.Code numbers, for the ``error.code`` of a failed long-running
#: operation of the Network Security API (``google.rpc.Status``).
RPC_CODES = {
    "INVALID_ARGUMENT": 3, "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10, "INTERNAL": 13,
    "UNAVAILABLE": 14,
}

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
NS_DOMAIN = "networksecurity.googleapis.com"


class ApiError(Exception):
    """An error answered synchronously (HTTP status >= 400) or recorded on an Operation.

    ``status`` overrides the google.rpc status name derived from ``code``
    (e.g. 400 FAILED_PRECONDITION); ``info`` (a google.rpc.ErrorInfo
    ``reason`` with optional ``metadata``) goes into ``details`` of the
    Network Security API's error shape (:meth:`rpc_body`), where
    ``google.api_core`` exposes it as ``exc.reason``.
    """

    def __init__(self, code: int, message: str, reason: str = "invalid",
                 op_code: str | None = None, *, status: str | None = None,
                 info: str | None = None, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.op_code = op_code or OPERATION_ERROR_CODES.get(code, "INTERNAL_ERROR")
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")
        self.info = info
        self.metadata = dict(metadata or {})

    def details(self) -> list[dict[str, Any]]:
        if not self.info:
            return []
        return [{"@type": ERROR_INFO, "reason": self.info, "domain": NS_DOMAIN,
                 "metadata": self.metadata}]

    def rpc_body(self) -> dict[str, Any]:
        """The HTTP error body of the Network Security API (google.rpc.Status JSON)."""
        return {"error": {"code": self.code, "message": self.message, "status": self.status,
                          "details": self.details()}}

    def rpc_status(self) -> dict[str, Any]:
        """The ``error`` of a failed long-running operation (google.rpc.Status)."""
        return {"code": RPC_CODES.get(self.status, 2), "message": self.message,
                "details": self.details()}

    def body(self) -> dict[str, Any]:
        """The HTTP error body."""
        return {"error": {
            "code": self.code,
            "message": self.message,
            "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
            "status": self.status,
        }}

    def operation_fields(self) -> dict[str, Any]:
        """The fields a DONE Operation carries when it failed with this error."""
        return {
            "error": {"errors": [{"code": self.op_code, "message": self.message}]},
            "httpErrorStatusCode": self.code,
            "httpErrorMessage": HTTP_ERROR_MESSAGES.get(self.code, "ERROR"),
        }


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "invalid")


def not_found(what: str) -> ApiError:
    return ApiError(404, f"The resource '{what}' was not found", "notFound")
