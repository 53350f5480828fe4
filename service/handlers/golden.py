"""Golden dataset handlers: create, promote, get, list, activate, compare.

Only two acts create a version (docs/golden.md): importing samples (``CreateGoldenDataset``)
and promoting a canary run (``PromoteCanaryRun``). Both go through :func:`store_version`: one
transaction that takes the call's idempotency key (see ``handlers/idempotency.py``) and stores
the version. Reads open read-only units of work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from costsim_analytics.engines.canary.evaluation import COMPARISONS_FILE
from costsim_analytics.engines.cost_models import CostModel, load_cost_model
from costsim_analytics.engines.errors import NotFound
from costsim_analytics.engines.golden import comparison as golden
from costsim_analytics.engines.golden import datasets
from costsim_analytics.engines.golden.commands import (
    ActivateGoldenDataset,
    CompareGolden,
    CreateGoldenDataset,
    GetGoldenDataset,
    ListGoldenDatasets,
    PromoteCanaryRun,
    StoredVersion,
)
from costsim_analytics.engines.golden.comparison import GoldenConfig
from costsim_analytics.engines.golden.datasets import GoldenDataset, NewGoldenDataset
from costsim_analytics.engines.golden.results import GoldenComparison
from costsim_analytics.engines.limits import WorkLimits, check_samples
from costsim_analytics.engines.reports import validate_run_id
from costsim_analytics.engines.text import DEFAULT_MAX_JSON_DEPTH, check_text
from costsim_analytics.handlers.call import Call, Clock, utc_now
from costsim_analytics.handlers.idempotency import Replay
from costsim_analytics.handlers.ports import ArtifactStore, UnitOfWork, UnitOfWorkFactory


def load_dataset(
    uow: UnitOfWork,
    name: str,
    version: int | None = None,
    *,
    limits: WorkLimits | None = None,
    field: str = "name",
) -> GoldenDataset:
    """One version with its samples, read in ``uow``.

    With ``limits``, a version holding more samples than one call may judge is refused
    (naming ``field``) before its samples are read: versions are made under the same bound,
    but the bound may have been lowered since.

    Raises:
        NotFound: no such name, version, or (``version`` None) no active version.
        WorkBoundExceeded: the version holds more than ``limits.max_samples`` samples.
    """
    found = uow.golden.get(name, version)
    if found is None:
        which = "active version" if version is None else f"version {version}"
        raise NotFound(f"golden dataset {name!r} has no {which}")
    if limits:
        check_samples(found.sample_count, limits, field)
    return replace(found, samples=uow.golden.samples(found.id))


def _replayed_version(uow: UnitOfWork, response: Mapping[str, Any]) -> StoredVersion:
    stored = uow.golden.get(str(response["name"]), int(response["version"]))
    if stored is None:
        raise NotFound(f"golden dataset {response['name']!r} lost its version")
    return StoredVersion(stored, replayed=True)


CREATE_REPLAY: Replay[CreateGoldenDataset, StoredVersion] = Replay(
    lambda cmd: cmd.request_id, CreateGoldenDataset.fingerprint, _replayed_version
)
PROMOTE_REPLAY: Replay[PromoteCanaryRun, StoredVersion] = Replay(
    lambda cmd: cmd.request_id, PromoteCanaryRun.fingerprint, _replayed_version
)


def store_version(
    uow_factory: UnitOfWorkFactory, new: NewGoldenDataset, call: Call, clock: Clock
) -> StoredVersion:
    """Store ``new`` (and the call's idempotency key) in one transaction."""
    now = clock()
    with uow_factory() as uow:
        if call.claim:
            call.claim.take(uow, now)
        dataset = uow.golden.create(new, now)
        if call.claim:
            call.claim.complete(uow, {"name": dataset.name, "version": dataset.version})
        uow.commit()
    return StoredVersion(dataset)


@dataclass
class CreateGoldenDatasetHandler:
    """CreateGoldenDataset: validate, canonicalise, store as the next version."""

    uow_factory: UnitOfWorkFactory
    clock: Clock = utc_now
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    limits: WorkLimits = field(default_factory=WorkLimits)

    def __call__(self, cmd: CreateGoldenDataset, call: Call, /) -> StoredVersion:
        """The stored version."""
        source = datasets.SOURCE_IMPORT
        new = datasets.prepare_dataset(
            cmd.name,
            cmd.description,
            source,
            cmd.samples,
            max_depth=self.max_json_depth,
            limits=self.limits,
        )
        return store_version(self.uow_factory, new, call, self.clock)


@dataclass
class PromoteCanaryRunHandler:
    """PromoteCanaryRun: the run's checked comparisons artifact becomes a new version."""

    uow_factory: UnitOfWorkFactory
    artifacts: ArtifactStore
    clock: Clock = utc_now
    limits: WorkLimits = field(default_factory=WorkLimits)

    def __call__(self, cmd: PromoteCanaryRun, call: Call, /) -> StoredVersion:
        """The stored version."""
        validate_run_id(cmd.run_id)
        bad = datasets.name_violations(cmd.name)
        check_text(cmd.description, "description", bad)
        datasets.raise_if(bad)
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
        # The run took at most this many, unless the bound was lowered since; its plans were
        # bounded when it took them.
        check_samples(len(samples), self.limits, "run_id")
        description = cmd.description or (
            f"canary run {cmd.run_id}: {report.baseline_model} outputs as expectations"
        )
        source = f"{datasets.PROMOTE_PREFIX}{cmd.run_id}"
        new = datasets.prepare_dataset(cmd.name, description, source, samples)
        return store_version(self.uow_factory, new, call, self.clock)


@dataclass
class GetGoldenDatasetHandler:
    """GetGoldenDataset: one version with its samples."""

    uow_factory: UnitOfWorkFactory

    def __call__(self, cmd: GetGoldenDataset, _call: Call, /) -> GoldenDataset:
        """The version, or NotFound."""
        datasets.validate_lookup(cmd.name, cmd.version)
        with self.uow_factory(read_only=True) as uow:
            return load_dataset(uow, cmd.name, cmd.version)


@dataclass
class ListGoldenDatasetsHandler:
    """ListGoldenDatasets: every version, without samples."""

    uow_factory: UnitOfWorkFactory

    def __call__(self, cmd: ListGoldenDatasets, _call: Call, /) -> list[GoldenDataset]:
        """By name, then version."""
        if cmd.name:
            datasets.raise_if(datasets.name_violations(cmd.name))
        with self.uow_factory(read_only=True) as uow:
            return uow.golden.list_versions(cmd.name)


@dataclass
class ActivateGoldenDatasetHandler:
    """ActivateGoldenDataset: move the active flag of a name to one version."""

    uow_factory: UnitOfWorkFactory

    def __call__(self, cmd: ActivateGoldenDataset, _call: Call, /) -> GoldenDataset:
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
    limits: WorkLimits = field(default_factory=WorkLimits)

    def __call__(self, cmd: CompareGolden, call: Call, /) -> GoldenComparison:
        """The comparison (never stored: CompareGolden is a read)."""
        datasets.validate_lookup(cmd.name, cmd.version)
        config = golden.resolve_config(cmd, self.defaults)
        candidate = self.models(cmd.candidate_model or "v2", field="candidate_model")
        baseline = self.models(cmd.baseline_model or "v1", field="baseline_model")
        with self.uow_factory(read_only=True) as uow:
            dataset = load_dataset(uow, cmd.name, cmd.version, limits=self.limits)
        call.check_deadline("the comparison")
        return golden.compare(dataset, candidate, baseline, config)
