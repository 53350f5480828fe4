"""The golden dataset commands and what they answer (docs/golden.md).

Only two acts create a version: importing samples (:class:`CreateGoldenDataset`) and promoting
a canary run (:class:`PromoteCanaryRun`); both are idempotent by ``request_id``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from costsim_analytics.engines.canonical import content_hash
from costsim_analytics.engines.golden.datasets import GoldenDataset, GoldenSample, sample_to_json


@dataclass(frozen=True, slots=True)
class CreateGoldenDataset:
    """Import samples as a new version of ``name``."""

    name: str
    description: str = ""
    samples: tuple[GoldenSample, ...] = ()
    request_id: str = ""

    def fingerprint(self) -> str:
        """Digest of everything but the request id, to recognise a retried request."""
        return content_hash(
            {
                "op": "create",
                "name": self.name,
                "description": self.description,
                "samples": [sample_to_json(s) for s in self.samples],
            }
        )


@dataclass(frozen=True, slots=True)
class PromoteCanaryRun:
    """Make a canary run's samples (baseline outputs as expectations) a new version."""

    run_id: str
    name: str
    description: str = ""
    request_id: str = ""

    def fingerprint(self) -> str:
        """Digest of everything but the request id (a run's artifacts never change)."""
        fields = asdict(self)
        del fields["request_id"]
        return content_hash({"op": "promote", **fields})


@dataclass(frozen=True, slots=True)
class GetGoldenDataset:
    """One version with its samples; ``version`` None: the active one."""

    name: str
    version: int | None = None


@dataclass(frozen=True, slots=True)
class ListGoldenDatasets:
    """Every version (of ``name`` when given), without samples."""

    name: str = ""


@dataclass(frozen=True, slots=True)
class ActivateGoldenDataset:
    """Make ``version`` the active version of ``name``."""

    name: str
    version: int


@dataclass(frozen=True, slots=True)
class CompareGolden:
    """The CompareGolden command; None means "the configured default"."""

    name: str
    version: int | None = None
    candidate_model: str = ""
    baseline_model: str = ""
    tolerance: float | None = None
    min_share: float | None = None
    max_feasibility_flips: int | None = None
    worst_samples: int | None = None


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """A stored version, and whether the answer replays an earlier call's."""

    dataset: GoldenDataset
    replayed: bool = False
