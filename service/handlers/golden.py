"""Golden dataset handlers: create, promote, get, list, activate, compare.

Only two acts create a version (docs/golden.md): importing samples (``CreateGoldenDataset``)
and promoting a canary run (``PromoteCanaryRun``). Both go through :func:`store_version`: one
transaction that claims the request's idempotency key, stores the version and records the
answer. Reads open read-only units of work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from costsim_analytics.drivers.artifacts import LocalArtifactStore
from costsim_analytics.engines import golden
from costsim_analytics.engines import golden_datasets as datasets
from costsim_analytics.engines.canary import COMPARISONS_FILE
from costsim_analytics.engines.canonical import content_hash
from costsim_analytics.engines.cost_models import CostModel, load_cost_model
from costsim_analytics.engines.errors import FieldViolation, NotFound, RequestIdReused
from costsim_analytics.engines.golden import CompareGolden, GoldenConfig
from costsim_analytics.engines.golden_datasets import GoldenDataset, GoldenSample, NewGoldenDataset
from costsim_analytics.engines.reports import GoldenComparison, validate_run_id
from costsim_analytics.handlers.ports import UnitOfWork, UnitOfWorkFactory
from costsim_analytics.handlers.provenance import Clock, utc_now
from costsim_analytics.handlers.registry import OP_GOLDEN_CREATE, OP_GOLDEN_PROMOTE


@dataclass(frozen=True, slots=True)
class CreateGoldenDataset:
    """Import samples as a new version of ``name``."""

    name: str
    description: str = ""
    samples: tuple[GoldenSample, ...] = ()
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class PromoteCanaryRun:
    """Make a canary run's samples (baseline outputs as expectations) a new version."""

    run_id: str
    name: str
    description: str = ""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class GetGoldenDataset:
    """One version with its samples; ``version`` None: the active one."""

    name: str
    version: int | None = None


@dataclass(frozen=True, slots=True)
class ActivateGoldenDataset:
    """Make ``version`` the active version of ``name``."""

    name: str
    version: int


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """A stored version, and whether the answer replays an earlier call's."""

    dataset: GoldenDataset
    replayed: bool = False


def _check_request_id(request_id: str) -> None:
    if len(request_id) > 128:
        datasets.raise_if([FieldViolation("request_id", "must be at most 128 characters")])


def load_dataset(uow: UnitOfWork, name: str, version: int | None = None) -> GoldenDataset:
    """One version with its samples, read in ``uow``.

    Raises:
        NotFound: no such name, version, or (``version`` None) no active version.
    """
    found = uow.golden.get(name, version)
    if found is None:
        which = "active version" if version is None else f"version {version}"
        raise NotFound(f"golden dataset {name!r} has no {which}")
    return replace(found, samples=uow.golden.samples(found.id))


def store_version(
    uow_factory: UnitOfWorkFactory,
    new: NewGoldenDataset,
    *,
    operation: str,
    request_id: str,
    request: Mapping[str, object],
    clock: Clock,
) -> StoredVersion:
    """Store ``new`` in one transaction, or replay the version an earlier call stored."""
    digest = content_hash({**request, "sha256": new.sha256})
    now = clock()
    with uow_factory() as uow:
        if request_id:
            earlier = uow.idempotency.claim(operation, request_id, digest, now)
            if earlier is not None:
                if earlier.request_hash != digest or earlier.response is None:
                    raise RequestIdReused(f"request_id {request_id!r} was used for another request")
                stored = uow.golden.get(new.name, int(earlier.response["version"]))
                if stored is None:
                    raise NotFound(f"golden dataset {new.name!r} lost its version")
                return StoredVersion(stored, replayed=True)
        dataset = uow.golden.create(new, now)
        if request_id:
            uow.idempotency.complete(
                operation, request_id, {"name": dataset.name, "version": dataset.version}
            )
        uow.commit()
    return StoredVersion(dataset)


@dataclass
class CreateGoldenDatasetHandler:
    """CreateGoldenDataset: validate, canonicalise, store as the next version."""

    uow_factory: UnitOfWorkFactory
    clock: Clock = utc_now

    def __call__(self, cmd: CreateGoldenDataset) -> StoredVersion:
        """The stored version (or the replayed one)."""
        _check_request_id(cmd.request_id)
        source = datasets.SOURCE_IMPORT
        new = datasets.prepare_dataset(cmd.name, cmd.description, source, cmd.samples)
        request = {"op": "create", "name": cmd.name, "description": cmd.description}
        return store_version(
            self.uow_factory,
            new,
            operation=OP_GOLDEN_CREATE,
            request_id=cmd.request_id,
            request=request,
            clock=self.clock,
        )


@dataclass
class PromoteCanaryRunHandler:
    """PromoteCanaryRun: the run's checked comparisons artifact becomes a new version."""

    uow_factory: UnitOfWorkFactory
    artifacts: LocalArtifactStore
    clock: Clock = utc_now

    def __call__(self, cmd: PromoteCanaryRun) -> StoredVersion:
        """The stored version (or the replayed one)."""
        validate_run_id(cmd.run_id)
        datasets.raise_if(datasets.name_violations(cmd.name))
        _check_request_id(cmd.request_id)
        with self.uow_factory(read_only=True) as uow:
            report = uow.reports.get_by_run_id(cmd.run_id)
        if report is None:
            raise NotFound(f"no canary report with run_id {cmd.run_id!r}")
        ref = next((a for a in report.artifacts if Path(a.path).name == COMPARISONS_FILE), None)
        try:
            data = self.artifacts.read(cmd.run_id, COMPARISONS_FILE)
        except OSError:
            data = None
        if ref is None or data is None or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise datasets.RunNotPromotable(
                f"canary run {cmd.run_id!r}: {COMPARISONS_FILE} is missing or does not match "
                "its recorded checksum; it cannot be promoted"
            )
        samples = datasets.promoted_samples(cmd.run_id, data)
        description = cmd.description or (
            f"canary run {cmd.run_id}: {report.baseline_model} outputs as expectations"
        )
        source = f"{datasets.PROMOTE_PREFIX}{cmd.run_id}"
        new = datasets.prepare_dataset(cmd.name, description, source, samples)
        request = {"op": "promote", "run_id": cmd.run_id, "name": cmd.name}
        return store_version(
            self.uow_factory,
            new,
            operation=OP_GOLDEN_PROMOTE,
            request_id=cmd.request_id,
            request={**request, "description": cmd.description},
            clock=self.clock,
        )


@dataclass
class GetGoldenDatasetHandler:
    """GetGoldenDataset: one version with its samples."""

    uow_factory: UnitOfWorkFactory

    def __call__(self, cmd: GetGoldenDataset) -> GoldenDataset:
        """The version, or NotFound."""
        datasets.validate_lookup(cmd.name, cmd.version)
        with self.uow_factory(read_only=True) as uow:
            return load_dataset(uow, cmd.name, cmd.version)


@dataclass
class ListGoldenDatasetsHandler:
    """ListGoldenDatasets: every version, without samples."""

    uow_factory: UnitOfWorkFactory

    def __call__(self, name: str = "") -> list[GoldenDataset]:
        """By name, then version."""
        if name:
            datasets.raise_if(datasets.name_violations(name))
        with self.uow_factory(read_only=True) as uow:
            return uow.golden.list_versions(name)


@dataclass
class ActivateGoldenDatasetHandler:
    """ActivateGoldenDataset: move the active flag of a name to one version."""

    uow_factory: UnitOfWorkFactory

    def __call__(self, cmd: ActivateGoldenDataset) -> GoldenDataset:
        """The now active version, or NotFound."""
        datasets.validate_lookup(cmd.name, cmd.version)
        with self.uow_factory() as uow:
            dataset = uow.golden.activate(cmd.name, cmd.version)
            if dataset is None:
                raise NotFound(f"golden dataset {cmd.name!r} has no version {cmd.version}")
            uow.commit()
        return dataset


@dataclass
class CompareGoldenHandler:
    """CompareGolden: judge a candidate model against a golden version, no canary run."""

    uow_factory: UnitOfWorkFactory
    defaults: GoldenConfig = field(default_factory=GoldenConfig)
    models: Callable[..., CostModel] = load_cost_model

    def __call__(self, cmd: CompareGolden) -> GoldenComparison:
        """The comparison (never stored: CompareGolden is a read)."""
        datasets.validate_lookup(cmd.name, cmd.version)
        config = golden.resolve_config(cmd, self.defaults)
        candidate = self.models(cmd.candidate_model or "v2", field="candidate_model")
        baseline = self.models(cmd.baseline_model or "v1", field="baseline_model")
        with self.uow_factory(read_only=True) as uow:
            dataset = load_dataset(uow, cmd.name, cmd.version)
        return golden.compare(dataset, candidate, baseline, config)
