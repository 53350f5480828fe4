"""Commands and results of the upkeep operations: reconcile and partition upkeep."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Import every complete report in the artifact store that the database lacks."""


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What a reconcile pass found in the artifact store."""

    imported: tuple[str, ...]
    present: int
    corrupt: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UpkeepResult:
    """The provenance partitions one upkeep pass created (none on SQLite)."""

    created: tuple[str, ...]
