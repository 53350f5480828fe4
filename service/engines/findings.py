"""What a verdict is made of: confidence intervals and failure reasons, and their JSON form.

Shared by the canary verdict (``engines/canary``) and the golden one (``engines/golden``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Interval:
    """A bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int


@dataclass(frozen=True, slots=True)
class FailureReason:
    """One reason a canary did not pass, as data and as a sentence."""

    code: str
    metric: str
    observed: float
    threshold: float
    comparator: str
    message: str
    interval: Interval | None = None


def plain(value: Any) -> Any:
    """``value`` with dataclasses as dicts and tuples as lists (JSON-ready)."""
    if isinstance(value, tuple):
        return [plain(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value


def interval_from_json(data: dict[str, Any] | None) -> Interval | None:
    """An :class:`Interval` from its JSON form (None stays None)."""
    return None if data is None else Interval(**data)


def reason_from_json(data: dict[str, Any]) -> FailureReason:
    """A :class:`FailureReason` from its JSON form."""
    return FailureReason(**{**data, "interval": interval_from_json(data.get("interval"))})
