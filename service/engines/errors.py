"""The project's error hierarchy. It knows nothing of transport.

::

    CostsimError                      base; ``reason`` is a stable UPPER_SNAKE code
     ├── InvalidArgument              the caller sent something wrong; carries field violations
     │    └── WorkBoundExceeded       more work than one call may ask for (samples, plan size,
     │                                artifact bytes: ``engines/limits.py``); names the bound
     ├── NotFound                     the named thing does not exist
     ├── AlreadyExists                a unique name or idempotency key is taken
     │    └── RequestIdReused         same request_id, different request
     ├── FailedPrecondition           the system is not in a state to do this
     │    └── SchemaOutOfDate         database schema behind the code's migrations
     ├── Unavailable                  a dependency is down; retrying later may work
     │    ├── DatabaseUnavailable     the database cannot be reached
     │    └── ArtifactStoreUnavailable  the artifact store (directory or object store) did
     │                                not answer in time
     ├── ResourceExhausted            over a bound on concurrent calls (retry later), or a
     │    │                           stream cut because its reader stopped reading
     │    └── MessageTooLarge         a request larger than its RPC's message limit (retrying
     │                                the same request cannot help)
     ├── DeadlineExceeded             the call's deadline passed before its work was done
     ├── Unauthenticated              no credentials, or credentials that do not verify
     └── PermissionDenied             a known caller asked for something the policy refuses;
                                      carries field violations (``records[3].tenant_id``)

Any error may carry ``metadata``: short string pairs that name what the error is about
(``{"method": ..., "tenant": ...}``), sent to callers beside the reason.

``api/errors.py`` maps these to gRPC status codes; anything else is an internal error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field, named by its path in the request (``records[3].v1_cost``)."""

    field: str
    description: str


class CostsimError(Exception):
    """Base of every error the service raises on purpose."""

    reason = "COSTSIM_ERROR"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(CostsimError):
    """The request is malformed; ``violations`` names every offending field."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Iterable[FieldViolation] = (),
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.violations = tuple(violations)

    @classmethod
    def field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        """Build an error about exactly one field.

        Example:
            >>> InvalidArgument.field("run_id", "must not be empty").violations[0].field
            'run_id'

        """
        return cls(f"{field}: {description}", [FieldViolation(field, description)], reason=reason)


class WorkBoundExceeded(InvalidArgument):
    """The call asks for more work than a bound allows; ``bound`` names it (``samples``)."""

    reason = "WORK_BOUND_EXCEEDED"

    def __init__(
        self,
        message: str,
        violations: Iterable[FieldViolation] = (),
        *,
        bound: str,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, violations, reason=reason)
        self.bound = bound


class NotFound(CostsimError):
    """The requested entity does not exist."""

    reason = "NOT_FOUND"


class AlreadyExists(CostsimError):
    """A unique key is already taken."""

    reason = "ALREADY_EXISTS"


class RequestIdReused(AlreadyExists):
    """The idempotency key was used before for a different request."""

    reason = "REQUEST_ID_REUSED"


class FailedPrecondition(CostsimError):
    """The system is not in a state that allows the operation."""

    reason = "FAILED_PRECONDITION"


class SchemaOutOfDate(FailedPrecondition):
    """The database schema is not at the revision this code expects."""

    reason = "SCHEMA_OUT_OF_DATE"


class Unavailable(CostsimError):
    """A dependency is temporarily unavailable; the caller may retry after ``retry_after_s``."""

    reason = "UNAVAILABLE"
    retry_after_s = 1.0


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached or dropped the connection."""

    reason = "DATABASE_UNAVAILABLE"


class ArtifactStoreUnavailable(Unavailable):
    """The artifact store could not be reached (connection refused, timed out, 5xx)."""

    reason = "ARTIFACT_STORE_UNAVAILABLE"


class ResourceExhausted(CostsimError):
    """A limit of the service refused the call (admission reasons in ``api/admission.py``).

    Retrying after ``retry_after_s`` may succeed; None: retrying the same call cannot.
    """

    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        retry_after_s: float | None = 1.0,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s


class MessageTooLarge(ResourceExhausted):
    """A request larger than its RPC's message limit: sent again as it is, it fails again."""

    reason = "MESSAGE_TOO_LARGE"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, reason=reason, retry_after_s=None, metadata=metadata)


class DeadlineExceeded(CostsimError):
    """The call's deadline passed: before its work started, or while it ran."""

    reason = "DEADLINE_EXCEEDED"


class Unauthenticated(CostsimError):
    """The caller presented no usable credentials (reasons in ``auth/authn.py``)."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(CostsimError):
    """The caller is known but may not do this; ``violations`` names refused request fields."""

    reason = "PERMISSION_DENIED"

    def __init__(
        self,
        message: str,
        violations: Iterable[FieldViolation] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = tuple(violations)
