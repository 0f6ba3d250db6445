"""Error mapping for the failures the local API cannot produce (or not
deterministically): exceptions and operations built the way the client
builds them, fed to the adapter's pure mapping functions."""
from __future__ import annotations

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from responder.compute import map_exception, map_operation_error
from responder.errors import (
    FingerprintMismatch,
    OutcomeUnknown,
    PermanentError,
    PermissionDenied,
    PolicyNotFound,
    PriorityTaken,
    QuotaExceeded,
    RuleNotFound,
    TransientError,
)

NOT_READY = "The resource 'projects/p/global/securityPolicies/x' is not ready"


def api_error(code: int, message: str, reason: str = "invalid") -> gexc.GoogleAPICallError:
    return gexc.from_http_status(code, message, errors=[{"message": message, "reason": reason,
                                                          "domain": "global"}])


@pytest.mark.parametrize("exc,mutation,expected", [
    (api_error(400, "Invalid value for field 'resource.priority': '5'. Cannot have rules with "
                    "the same priorities."), True, PriorityTaken),
    (api_error(400, "The security policy already contains a rule at priority 5."), True,
     PriorityTaken),
    (api_error(400, "Invalid value for field 'priority': '5'. The security policy does not "
                    "contain a rule at priority 5."), True, RuleNotFound),
    (api_error(400, "Maximum number of src_ip_ranges allowed is 10."), True, PermanentError),
    # An operation in flight on the policy: nothing was done, so retried (not OutcomeUnknown).
    (api_error(400, NOT_READY, "resourceNotReady"), True, TransientError),
    (api_error(400, NOT_READY, "resourceNotReady"), False, TransientError),
    (api_error(400, "Operation in progress.", "resourceNotReady"), True, TransientError),
    (api_error(400, NOT_READY), True, TransientError),  # the message alone says so
    (api_error(404, "The resource 'projects/p/global/securityPolicies/x' was not found",
               "notFound"), False, PolicyNotFound),
    (api_error(403, "Quota 'SECURITY_POLICY_RULES' exceeded.  Limit: 200.0 globally.",
               "quotaExceeded"), True, QuotaExceeded),
    (api_error(403, "Required 'compute.securityPolicies.update' permission", "forbidden"), True,
     PermissionDenied),
    (api_error(403, "Rate Limit Exceeded", "rateLimitExceeded"), True, TransientError),
    (api_error(401, "Request had invalid authentication credentials.", "authError"), False,
     PermissionDenied),
    (api_error(409, "The resource already exists", "alreadyExists"), True, PermanentError),
    (api_error(412, "Labels fingerprint either invalid or resource labels have changed",
               "conditionNotMet"), True, FingerprintMismatch),
    (api_error(429, "Rate Limit Exceeded", "rateLimitExceeded"), True, TransientError),
    (api_error(500, "Internal Error", "backendError"), True, OutcomeUnknown),
    (api_error(500, "Internal Error", "backendError"), False, TransientError),
    (api_error(502, "Bad Gateway"), True, OutcomeUnknown),
    (api_error(503, "The service is currently unavailable.", "backendError"), True,
     OutcomeUnknown),
    (api_error(504, "Gateway Timeout"), True, OutcomeUnknown),
    (gexc.DeadlineExceeded("deadline"), True, OutcomeUnknown),
    (gexc.RetryError("Timeout of 600.0s exceeded", None), False, TransientError),
    (requests.exceptions.ReadTimeout("read timed out"), True, OutcomeUnknown),
    (requests.exceptions.ReadTimeout("read timed out"), False, TransientError),
    (requests.exceptions.ConnectionError("Connection aborted."), True, OutcomeUnknown),
    (requests.exceptions.ConnectTimeout("connect timed out"), True, TransientError),
    (requests.exceptions.ChunkedEncodingError("broken"), True, OutcomeUnknown),
])
def test_map_exception(exc, mutation, expected):
    mapped = map_exception(exc, mutation=mutation)
    assert type(mapped) is expected


def operation(code: str, message: str, http: int, status: str = "DONE") -> compute_v1.Operation:
    return compute_v1.Operation(
        name="operation-1", status=status, http_error_status_code=http,
        error=compute_v1.Error(errors=[compute_v1.Errors(code=code, message=message)]))


@pytest.mark.parametrize("op,expected", [
    (operation("QUOTA_EXCEEDED", "Quota 'SECURITY_POLICY_RULES' exceeded.", 403), QuotaExceeded),
    (operation("INVALID_USAGE", "The security policy already contains a rule at priority 9.",
               400), PriorityTaken),
    (operation("INVALID_USAGE", "The security policy does not contain a rule at priority 9.",
               400), RuleNotFound),
    (operation("CONDITION_NOT_MET", "Labels fingerprint either invalid", 412),
     FingerprintMismatch),
    (operation("INTERNAL_ERROR", "Internal error. Please try again.", 500), TransientError),
    (operation("INTERNAL_ERROR", "Internal error, no HTTP status", 0), TransientError),
    (operation("RESOURCE_NOT_FOUND", "The resource was not found", 404), PolicyNotFound),
    (operation("INVALID_USAGE", "Something else", 400), PermanentError),
    (operation("RESOURCE_NOT_READY", NOT_READY, 400), TransientError),
    (operation("INVALID_USAGE", NOT_READY, 400), TransientError),
    (operation("SOMETHING", "denied", 403), PermissionDenied),
])
def test_map_operation_error(op, expected):
    assert type(map_operation_error(op)) is expected


def test_successful_operation_maps_to_none():
    assert map_operation_error(compute_v1.Operation(name="op", status="DONE")) is None
