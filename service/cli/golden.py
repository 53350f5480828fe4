"""``costsim-analytics golden import|export|promote|list|show|activate|compare``.

Client commands: they talk to a server (``--target``). Files are JSONL, one sample per line
(``{"id", "plan_input", "expected_cost_cents", "expected_feasible", "expected_duration_ms"}``),
the format ``golden export`` writes byte for byte as the server hashes it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.api import convert_golden
from costsim_analytics.api.client import JsonDict
from costsim_analytics.cli.common import AsJson, Target, connect, err, out, rpc, table
from costsim_analytics.engines.errors import InvalidArgument
from costsim_analytics.engines.golden import datasets

app = typer.Typer(help="Golden datasets: versioned reference samples and comparisons with them.")

Name = Annotated[str, typer.Argument(help="The golden dataset's name.")]
Version = Annotated[
    int | None, typer.Option("--version", help="A version (default: the active one).")
]
Description = Annotated[str, typer.Option(help="What this version is (at most 1,024 chars).")]
RequestId = Annotated[str, typer.Option(help="Idempotency key: a retry replays the answer.")]


def _print_version(dataset: JsonDict, as_json: bool, replayed: bool = False) -> None:
    if as_json:
        print(json.dumps({"dataset": dataset, "replayed": replayed}))
        return
    state = "active" if dataset.get("active") else "inactive"
    again = " (replayed)" if replayed else ""
    out.print(
        f"golden {dataset.get('name')} v{dataset.get('version')}{again}: "
        f"{dataset.get('sample_count', 0)} samples, {state}, sha256 {dataset.get('sha256')}"
    )


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="JSONL of samples; - reads stdin.")],
    name: Annotated[str, typer.Option("--name", help="The dataset to add a version to.")],
    target: Target = "",
    description: Description = "",
    request_id: RequestId = "",
    as_json: AsJson = False,
) -> None:
    """Store a file's samples as a new version (the first version of a name is active)."""
    text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    try:
        samples = datasets.parse_jsonl(text)
    except InvalidArgument as exc:
        err.print(f"[red]{file}[/red]: {exc.message}")
        raise typer.Exit(2) from None
    rows = [datasets.sample_to_json(s) for s in samples]
    with connect(target) as client:
        result = rpc(
            lambda: client.create_golden(name, rows, description=description, request_id=request_id)
        )
    _print_version(result["dataset"], as_json, result.get("replayed", False))


@app.command("export")
def export(
    name: Name,
    version: Version = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="File to write; - is stdout.")
    ] = Path("-"),
    target: Target = "",
) -> None:
    """Write a version's samples as canonical JSONL (its sha256 is the version's)."""
    with connect(target) as client:
        found = rpc(lambda: client.get_golden(name, version))
    dataset = convert_golden.dataset(json_format.ParseDict(found, pb.GoldenDataset()))
    body = datasets.export_jsonl(dataset.samples)
    if datasets.dataset_sha256(dataset.samples) != dataset.sha256:
        err.print(f"[red]the export does not hash to {dataset.sha256}[/red]; not written")
        raise typer.Exit(1)
    if str(output) == "-":
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    else:
        output.write_bytes(body)
        err.print(f"golden {name} v{dataset.version}: {len(dataset.samples)} samples -> {output}")


@app.command("promote")
def promote(
    run_id: Annotated[str, typer.Argument(help="The canary run to promote.")],
    name: Annotated[str, typer.Option("--name", help="The dataset to add a version to.")],
    target: Target = "",
    description: Description = "",
    request_id: RequestId = "",
    as_json: AsJson = False,
) -> None:
    """Store a canary run's samples, baseline outputs as expectations, as a new version."""
    with connect(target) as client:
        result = rpc(
            lambda: client.promote_golden(
                run_id, name, description=description, request_id=request_id
            )
        )
    _print_version(result["dataset"], as_json, result.get("replayed", False))


@app.command("list")
def list_(
    name: Annotated[str, typer.Option("--name", help="Only this dataset's versions.")] = "",
    target: Target = "",
    as_json: AsJson = False,
) -> None:
    """Every version of every golden dataset, active ones marked."""
    with connect(target) as client:
        found = rpc(lambda: client.list_golden(name))
    if as_json:
        for dataset in found:
            print(json.dumps(dataset))
        return
    rows = [
        [
            d["name"],
            d["version"],
            "*" if d["active"] else "",
            d["sample_count"],
            d["sha256"][:16],
            d["source"],
            d.get("created_at"),
        ]
        for d in found
    ]
    columns = ["name", "version", "active", "samples", "sha256", "source", "created_at"]
    table("golden datasets", columns, rows)


@app.command("show")
def show(name: Name, version: Version = None, target: Target = "", as_json: AsJson = False) -> None:
    """One version: its identity, description, source and first samples."""
    with connect(target) as client:
        found = rpc(lambda: client.get_golden(name, version))
    if as_json:
        print(json.dumps(found))
        return
    samples = found.pop("samples", [])
    table(f"golden {name} v{found['version']}", ["field", "value"], list(map(list, found.items())))
    keys = ("id", "expected_cost_cents", "expected_feasible", "expected_duration_ms")
    rows = [[*map(s.get, keys), len(s.get("plan_input", {}).get("plan", []))] for s in samples[:20]]
    title = f"samples (first {len(rows)} of {len(samples)})"
    table(title, ["id", "expected cost", "feasible", "duration ms", "steps"], rows)


@app.command("activate")
def activate(
    name: Name,
    version: Annotated[int, typer.Argument(help="The version to make active.")],
    target: Target = "",
    as_json: AsJson = False,
) -> None:
    """Make one version the active version of its name (the one canary runs use)."""
    with connect(target) as client:
        dataset = rpc(lambda: client.activate_golden(name, version))
    _print_version(dataset, as_json)


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def print_comparison(c: JsonDict) -> None:
    """A golden comparison for people: verdict, both models, direction, worst samples."""
    verdict = "[green]pass[/green]" if c.get("passed") else "[red]fail[/red]"
    out.print(
        f"golden {c.get('dataset_name')} v{c.get('dataset_version')} "
        f"(sha256 {str(c.get('dataset_sha256', ''))[:16]}): {verdict}"
    )
    cand, base = c.get("candidate", {}), c.get("baseline", {})
    rows: list[list[Any]] = [
        [key.replace("_", " "), _num(cand.get(key)), _num(base.get(key))]
        for key in (
            "samples",
            "invalid_samples",
            "within_tolerance",
            "mean_relative_error",
            "p90_relative_error",
            "mean_absolute_error",
            "max_absolute_error",
        )
    ]
    rows.insert(
        3, ["share within", *(f"{m.get('within_tolerance_share', 0):.1%}" for m in (cand, base))]
    )
    rows.append(
        ["feasibility flips", *(m.get("feasibility", {}).get("flips") for m in (cand, base))]
    )
    table(
        f"pass: >= {c.get('min_share')} within {c.get('tolerance')} relative error",
        ["", f"candidate {cand.get('model')}", f"baseline {base.get('model')}"],
        rows,
    )
    change = c.get("mean_relative_error_delta")
    delta = "n/a" if change is None else f"{change:+.4g}"
    where = {"toward": "toward", "away": "away from"}.get(
        str(c.get("direction")), "neither toward nor away from"
    )
    out.print(
        f"the candidate moved {where} the reference (mean relative error {delta} against "
        f"the baseline): closer on "
        f"{c.get('closer_samples')} samples, farther on {c.get('farther_samples')}, "
        f"tied on {c.get('tied_samples')}"
    )
    worst = [
        [
            s.get("id"),
            _num(s.get("expected_cost_cents")),
            _num(s.get("candidate_cost_cents")) or s.get("error"),
            _num(s.get("relative_error")),
            f"{_yes(s.get('expected_feasible'))}/{_yes(s.get('candidate_feasible'))}",
            _num(s.get("baseline_cost_cents")),
        ]
        for s in c.get("worst_samples", [])
    ]
    columns = ["id", "expected", "candidate", "rel. error", "feasible exp/cand", "baseline"]
    table("worst samples", columns, worst)
    for reason in c.get("reasons", []):
        out.print(f"  [red]{reason.get('code')}[/red]: {reason.get('message')}")


@app.command("compare")
def compare(
    name: Name,
    version: Version = None,
    target: Target = "",
    candidate: Annotated[str, typer.Option(help="Candidate cost model (default v2).")] = "",
    baseline: Annotated[str, typer.Option(help="Baseline cost model (default v1).")] = "",
    tolerance: Annotated[float | None, typer.Option(help="Relative error (0.10).")] = None,
    min_share: Annotated[float | None, typer.Option(help="Share within it (0.95).")] = None,
    max_flips: Annotated[int | None, typer.Option(help="Feasibility flips (0).")] = None,
    worst: Annotated[int | None, typer.Option(help="Worst samples to show (10).")] = None,
    as_json: AsJson = False,
) -> None:
    """Judge a candidate model against a golden version; exit 1 when it fails."""
    fields = {
        "name": name,
        "version": version,
        "candidate_model": candidate,
        "baseline_model": baseline,
        "tolerance": tolerance,
        "min_share": min_share,
        "max_feasibility_flips": max_flips,
        "worst_samples": worst,
    }
    request = {k: v for k, v in fields.items() if v is not None and v != ""}
    with connect(target) as client:
        comparison = rpc(lambda: client.compare_golden(request))
    if as_json:
        print(json.dumps(comparison))
    else:
        print_comparison(comparison)
    if not comparison.get("passed", False):
        raise typer.Exit(1)
