"""``costsim-analytics canary run|reconcile``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from costsim_analytics.api import convert_canary
from costsim_analytics.api.client import JsonDict
from costsim_analytics.bootstrap import build_registry
from costsim_analytics.cli.common import (
    AsJson,
    DatabaseUrl,
    Target,
    connect,
    err,
    out,
    rpc,
    settings_with,
    table,
)
from costsim_analytics.cli.explain import explain
from costsim_analytics.engines.errors import CostsimError
from costsim_analytics.engines.maintenance import Reconcile
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import OP_CANARY_RECONCILE, OP_CANARY_RUN
from costsim_analytics.pools import build_engine

app = typer.Typer(help="Run canary comparisons, explain them, reconcile their artifacts.")
app.command("explain")(explain)

EXIT_FAIL = 1
EXIT_ERROR = 3
# Another run held the lock: nothing was judged. Non-zero, so a scheduler sees it.
EXIT_SKIPPED = 4
# The evidence could not decide (docs/statistics.md, section 6): not a pass either.
EXIT_INCONCLUSIVE = 5
_EXIT_CODES = {
    "PASS": 0,
    "FAIL": EXIT_FAIL,
    "SKIPPED": EXIT_SKIPPED,
    "INCONCLUSIVE": EXIT_INCONCLUSIVE,
}
# With --wait: seconds between asks while the run lock is held elsewhere.
RETRY_S = 5.0


def _request(**fields: Any) -> JsonDict:
    return {key: value for key, value in fields.items() if value not in (None, "", 0)}


def _load_samples(path: Path) -> list[JsonDict]:
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                err.print(f"[red]{path}:{number}[/red]: not JSON ({exc.msg})")
                raise typer.Exit(2) from None
            samples.append(
                {
                    "id": str(row.get("id", f"sample-{number}")),
                    "plan_input": row.get("plan_input", row),
                }
            )
    return samples


def _print(report: JsonDict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    status = report.get("status", "").removeprefix("CANARY_STATUS_").lower()
    colour = {
        "pass": "green",
        "fail": "red",
        "error": "red",
        "skipped": "yellow",
        "inconclusive": "yellow",
    }.get(status, "")
    out.print(f"canary {report.get('run_id')}: [{colour}]{status}[/{colour}]")
    keys = (
        "total_samples",
        "invalid_samples",
        "matching_samples",
        "minor_drift_samples",
        "major_drift_samples",
        "median_cost_diff",
        "p90_cost_diff",
        "kl_divergence",
        "outlier_count",
        "sample_source",
        "baseline_model",
        "candidate_model",
    )
    stats = report.get("statistics", {})
    rows = [[k, report.get(k, 0)] for k in keys]
    rows.append(["js_divergence", stats.get("js_divergence")])
    test = stats.get("paired_test", {})
    rows.append(
        ["paired test", f"{test.get('method')} p={test.get('p_value')} r={test.get('effect_size')}"]
    )
    judgement = stats.get("judgement")
    if judgement:
        rows.append(
            [
                "judge",
                f"{judgement.get('judge')} ({judgement.get('kl_bin_method')} bins, "
                f"{judgement.get('permutations', 0)} permutations)",
            ]
        )
        for rule in judgement.get("rules", []):
            rows.append([f"rule {rule.get('rule')}", rule.get("decision")])
    table("metrics", ["metric", "value"], rows)
    golden = report.get("golden_comparison")
    if golden:
        cand = golden.get("candidate", {})
        verdict = "pass" if golden.get("passed") else "fail"
        out.print(
            f"golden {golden.get('dataset_name')} v{golden.get('dataset_version')}: "
            f"{cand.get('within_tolerance_share', 0):.1%} within {golden.get('tolerance', 0):.0%}"
            f" ({verdict}; candidate moved {golden.get('direction', 'unchanged')})"
        )
    for reason in report.get("reasons", []):
        out.print(f"  [red]{reason.get('code')}[/red]: {reason.get('message')}")
    for artifact in report.get("artifacts", []):
        out.print(f"  artifact {artifact['path']} sha256={artifact['sha256']}")


def _exit_code(report: JsonDict) -> int:
    """0 pass, 1 fail, 3 error (or no status), 4 skipped, 5 inconclusive."""
    return _EXIT_CODES.get(str(report.get("status", "")).removeprefix("CANARY_STATUS_"), EXIT_ERROR)


def _skipped(report: JsonDict) -> bool:
    return str(report.get("status", "")).endswith("SKIPPED")


@app.command("run")
def run(
    target: Target = "",
    local: Annotated[
        bool, typer.Option("--local", help="Run in this process, not on a server.")
    ] = False,
    database_url: DatabaseUrl = None,
    artifacts_dir: Annotated[Path | None, typer.Option(help="With --local: artifact root.")] = None,
    sample_count: Annotated[int, typer.Option(help="Samples from provenance (default 100).")] = 0,
    lookback_days: Annotated[int, typer.Option(help="Provenance window (default 7).")] = 0,
    samples: Annotated[Path | None, typer.Option(help="JSONL of {id, plan_input} samples.")] = None,
    seed: int = 0,
    request_id: str = "",
    baseline: Annotated[str, typer.Option(help="Baseline cost model (default v1).")] = "",
    candidate: Annotated[str, typer.Option(help="Candidate cost model (default v2).")] = "",
    drift_threshold: float | None = None,
    outlier_threshold: float | None = None,
    outlier_max_pct: float | None = None,
    major_drift_max_pct: float | None = None,
    min_samples: int | None = None,
    median_delta_tolerance: float | None = None,
    golden_dataset: Annotated[
        str, typer.Option(help="Judge against this golden dataset (default: configured).")
    ] = "",
    judge: Annotated[
        str, typer.Option(help="Verdict rule: calibrated or legacy (default: configured).")
    ] = "",
    wait: Annotated[
        float,
        typer.Option(
            help="While another run holds the lock, ask again for up to this many seconds "
            "(0: answer skipped at once)."
        ),
    ] = 0.0,
    as_json: AsJson = False,
) -> None:
    """Run a canary; exit 0 pass, 1 fail, 3 error, 4 skipped, 5 inconclusive."""
    request = _request(
        sample_count=sample_count,
        lookback_days=lookback_days,
        seed=seed,
        request_id=request_id,
        baseline_model=baseline,
        candidate_model=candidate,
        drift_threshold=drift_threshold,
        outlier_threshold=outlier_threshold,
        outlier_max_pct=outlier_max_pct,
        major_drift_max_pct=major_drift_max_pct,
        min_samples=min_samples,
        median_delta_tolerance=median_delta_tolerance,
        golden_dataset=golden_dataset,
        judge=judge,
        samples=_load_samples(samples) if samples else None,
    )
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        if not local:
            with connect(target) as client:
                response = rpc(lambda: client.run_canary(request))
            report = response.get("report", {})
        else:
            report = _run_local(request, database_url, artifacts_dir)
        remaining = deadline - time.monotonic()
        if not _skipped(report) or remaining <= 0:
            break
        err.print(f"run lock held elsewhere; asking again ({remaining:.0f} s left)")
        time.sleep(min(RETRY_S, remaining))
    _print(report, as_json)
    raise typer.Exit(_exit_code(report))


def _run_local(request: JsonDict, database_url: str | None, artifacts_dir: Path | None) -> JsonDict:
    settings = settings_with(database_url=database_url, artifacts_dir=artifacts_dir)
    engine = build_engine(settings)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("loading samples", total=None)
            registry = build_registry(
                engine, settings, progress=lambda stage: bar.update(task, description=stage)
            )
            command = convert_canary.run_canary_from_json(request)
            result = registry.get(OP_CANARY_RUN)(command, Call())
    except CostsimError as exc:
        err.print(f"[red]{exc.reason}[/red]: {exc.message}")
        raise typer.Exit(EXIT_ERROR) from None
    finally:
        engine.dispose()
    return json_format.MessageToDict(
        convert_canary.canary_report(result.report), preserving_proto_field_name=True
    )


@app.command("reconcile")
def reconcile(
    database_url: DatabaseUrl = None,
    artifacts_dir: Annotated[Path | None, typer.Option(help="Artifact root to scan.")] = None,
    as_json: AsJson = False,
) -> None:
    """Import every complete report in the artifact store that the database lacks."""
    settings = settings_with(database_url=database_url, artifacts_dir=artifacts_dir)
    engine = build_engine(settings)
    try:
        result = build_registry(engine, settings).get(OP_CANARY_RECONCILE)(Reconcile(), Call())
    except CostsimError as exc:
        err.print(f"[red]{exc.reason}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    summary = {
        "imported": list(result.imported),
        "present": result.present,
        "corrupt": list(result.corrupt),
    }
    if as_json:
        print(json.dumps(summary))
        return
    out.print(
        f"imported {len(result.imported)}, already present {result.present}, "
        f"corrupt {len(result.corrupt)}"
    )
    for run_id in result.imported:
        out.print(f"  imported {run_id}")
    for run_id in result.corrupt:
        err.print(f"  [red]corrupt[/red] {run_id}")
    if result.corrupt:
        raise typer.Exit(1)
