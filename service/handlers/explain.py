"""ExplainCanaryRun: a stored run explained from its checked artifacts (read only)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from costsim_analytics.engines.canary import explain as engine
from costsim_analytics.engines.canary.evaluation import COMPARISONS_FILE, REPORT_FILE
from costsim_analytics.engines.canary.explain import ExplainRun, Explanation, RunNotExplainable
from costsim_analytics.engines.errors import NotFound
from costsim_analytics.engines.reports import CanaryReport
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.ports import ArtifactStore, UnitOfWorkFactory


def read_checked(artifacts: ArtifactStore, report: CanaryReport, name: str) -> bytes:
    """One artifact of ``report``, only if it still matches the checksum the report names.

    Raises:
        RunNotExplainable: the report names no such artifact, or it is gone or altered.
    """
    ref = next((a for a in report.artifacts if Path(a.path).name == name), None)
    try:
        data = artifacts.read(report.run_id, name) if ref is not None else None
    except OSError:
        data = None
    if ref is None or data is None or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise RunNotExplainable(
            f"canary run {report.run_id!r} cannot be explained: its {name} is missing or "
            "does not match its recorded checksum"
        )
    return data


@dataclass
class ExplainCanaryRunHandler:
    """Read the report (read-only unit of work), check its artifacts, explain it."""

    uow_factory: UnitOfWorkFactory
    artifacts: ArtifactStore

    def __call__(self, cmd: ExplainRun, call: Call, /) -> Explanation:
        """The explanation, or NotFound / RunNotExplainable."""
        engine.validate(cmd)
        with self.uow_factory(read_only=True) as uow:
            report = uow.reports.get_by_run_id(cmd.run_id)
        if report is None:
            raise NotFound(f"no canary report with run_id {cmd.run_id!r}")
        report_json = json.loads(read_checked(self.artifacts, report, REPORT_FILE))
        comparisons = read_checked(self.artifacts, report, COMPARISONS_FILE)
        call.check_deadline("the explanation")
        return engine.explain(cmd, report, report_json, comparisons)
