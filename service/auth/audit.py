"""The audit log: one JSON line per mutating call and per denied call.

Lines go to the logger ``costsim_analytics.audit`` at INFO, so an operator can route them to
their own file or sink with ordinary logging configuration. Each line is a JSON object::

    {"time": "2025-01-31T12:00:00.123456Z", "event": "rpc", "principal": "spiffe://…",
     "authenticated_by": "mtls", "method": "/costsim.analytics.v1.AnalyticsService/…",
     "tenants": ["acme"], "request_id": "…", "outcome": "OK", "reason": ""}

Every value that came from a caller is sanitised: control characters become ``?`` and strings
are cut to :data:`MAX_CHARS`; at most :data:`MAX_TENANTS` distinct tenants are listed.

Example:
    >>> line = audit_line(principal="ci", method="/m", tenants=["b", "a", "a"],
    ...                   request_id="r1", outcome="OK", now=datetime(2025, 1, 1, tzinfo=UTC))
    >>> json.loads(line)["tenants"]
    ['a', 'b']

"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime

from costsim_analytics.auth.methods import rule_for

AUDIT_LOGGER = "costsim_analytics.audit"
MAX_CHARS = 256
MAX_TENANTS = 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

log = logging.getLogger(AUDIT_LOGGER)


def sanitise(value: object) -> str:
    """``value`` as a printable, bounded string."""
    text = _CONTROL.sub("?", str(value))
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def should_audit(method: str, outcome: str) -> bool:
    """Whether a call is audited: every mutating call, and every call that was refused."""
    if outcome in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return True
    rule = rule_for(method)
    return rule is None or rule.mutating


def audit_line(
    *,
    principal: str | None,
    method: str,
    tenants: Iterable[str],
    request_id: str,
    outcome: str,
    reason: str = "",
    authenticated_by: str = "",
    now: datetime | None = None,
) -> str:
    """The JSON line of one call (see the module docstring)."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    distinct = sorted({sanitise(t) for t in set(tenants)})  # a batch names one a record
    listed = distinct[:MAX_TENANTS]
    record: dict[str, object] = {
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event": "rpc",
        "principal": sanitise(principal) if principal is not None else None,
        "authenticated_by": sanitise(authenticated_by),
        "method": sanitise(method),
        "tenants": listed,
        "request_id": sanitise(request_id),
        "outcome": sanitise(outcome),
        "reason": sanitise(reason),
    }
    if len(distinct) > len(listed):
        record["tenants_omitted"] = len(distinct) - len(listed)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def audit(
    *,
    principal: str | None,
    method: str,
    tenants: Iterable[str],
    request_id: str,
    outcome: str,
    reason: str = "",
    authenticated_by: str = "",
    logger: logging.Logger | None = None,
) -> None:
    """Write the audit line of a call when :func:`should_audit` says so.

    ``principal`` is None when authentication itself failed; ``outcome`` is the status code
    name (``OK``, ``PERMISSION_DENIED``, ``UNAUTHENTICATED``, ``INVALID_ARGUMENT``, …) and
    ``reason`` the ErrorInfo reason.
    """
    if not should_audit(method, outcome):
        return
    (logger or log).info(
        "%s",
        audit_line(
            principal=principal,
            method=method,
            tenants=tenants,
            request_id=request_id,
            outcome=outcome,
            reason=reason,
            authenticated_by=authenticated_by,
        ),
    )
