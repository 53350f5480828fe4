"""``costsim-analytics canary explain RUN_ID``: where a run's drift comes from."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format

from costsim_analytics.api import convert_explain
from costsim_analytics.api.client import JsonDict
from costsim_analytics.bootstrap import build_registry
from costsim_analytics.cli.common import (
    AsJson,
    DatabaseUrl,
    Target,
    connect,
    err,
    out,
    settings_with,
    stream,
    table,
)
from costsim_analytics.engines.canary.attribution import GROUP_BYS
from costsim_analytics.engines.canary.explain import DEFAULT_TOP, MAX_TOP, ExplainRun
from costsim_analytics.engines.errors import CostsimError
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import OP_CANARY_EXPLAIN
from costsim_analytics.pools import build_engine


def _cents(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _pct(value: Any) -> str:
    return f"{float(value or 0.0) * 100:.1f}%"


def _interval(low: Any, high: Any) -> str:
    return f"{float(low or 0.0) * 100:.1f}-{float(high or 0.0) * 100:.1f}"


def print_explanation(messages: Iterable[JsonDict], as_json: bool) -> None:
    """The summary's groups and histograms, then each drifting sample step by step."""
    if as_json:
        for message in messages:
            print(json.dumps(message))
        return
    for message in messages:
        if "summary" in message:
            _print_summary(message["summary"])
        else:
            _print_sample(message["sample"])


def _print_summary(s: JsonDict) -> None:
    group_by = str(s.get("group_by", "")).removeprefix("EXPLAIN_GROUP_BY_").lower()
    out.print(
        f"canary {s['run_id']}: {s['baseline_model']} -> {s['candidate_model']}, "
        f"{s['samples']} samples, {s['steps']} steps; total delta {_cents(s['total_delta'])} "
        f"cents (|delta| {_cents(s['total_abs_delta'])} step by step), {s['flips']} "
        f"feasibility flips"
    )
    if s.get("samples_without_steps"):
        err.print(
            f"[yellow]{s['samples_without_steps']} samples have no per-step breakdown[/yellow]"
            ": their whole delta is counted at the plan level"
        )
    rows = [
        [
            g["group"],
            g["steps"],
            _cents(g["v1_cost_per_step"]),
            _cents(g["v2_cost_per_step"]),
            _cents(g["delta"]),
            _pct(g["share"]),
            _interval(g["share_low"], g["share_high"]),
            f"{float(g['flips']):.1f}",
            _pct(g["duration_share"]),
            _pct(g["risk_share"]),
        ]
        for g in s.get("groups", [])
    ]
    level = float(s.get("confidence_level", 0.95))
    out.print(
        "V1/V2 ¢: mean cost per step; share: of |Δ| step by step, with its "
        f"{level:.0%} bootstrap interval ({s.get('bootstrap_resamples')} resamples); flips: "
        "feasibility flips attributed; ms, risk: shares of the latency and risk change"
    )
    table(
        f"where the drift comes from, by {group_by or 'skill'}",
        ["group", "steps", "V1 ¢", "V2 ¢", "Δ ¢", "share", "CI %", "flips", "ms", "risk"],
        rows,
    )
    for h in s.get("histograms", []):
        edges = h.get("edges", [])
        cells = [
            [f"{edges[i]:.4g} - {edges[i + 1]:.4g}", b, c]
            for i, (b, c) in enumerate(
                zip(h.get("baseline_counts", []), h.get("candidate_counts", []), strict=False)
            )
        ]
        kl = h.get("kl")
        title = f"{h['name']}: {h['method']} bins" + ("" if kl is None else f", KL {kl:.4f}")
        table(title, ["cost bin (cents)", "V1", "V2"], cells)


def _print_sample(d: JsonDict) -> None:
    causes = ", ".join(d.get("flip_causes", [])) or "none"
    out.print(
        f"sample {d['id']} (comparisons.jsonl line {d['index']}): {d['verdict']}, drift score "
        f"{float(d['drift_score']):.3f}, cost {_cents(d['v1_cost'])} -> {_cents(d['v2_cost'])} "
        f"cents, feasible {d['v1_feasible']} -> {d['v2_feasible']} (flip: {causes})"
    )
    rows = [
        [
            "plan" if s["position"] < 0 else s["position"] + 1,
            s["skill"],
            _cents(s.get("v1_cost")),
            _cents(s.get("v2_cost")),
            _cents(s["cost_delta"]),
            _cents(s.get("v1_latency_ms")),
            _cents(s.get("v2_latency_ms")),
            "-" if s.get("v1_risk") is None else f"{s['v1_risk']:.3f}",
            "-" if s.get("v2_risk") is None else f"{s['v2_risk']:.3f}",
        ]
        for s in d.get("steps", [])
    ]
    table(
        "",
        ["step", "skill", "V1 ¢", "V2 ¢", "delta ¢", "V1 ms", "V2 ms", "V1 risk", "V2 risk"],
        rows,
    )


def _local(
    cmd: ExplainRun, database_url: str | None, artifacts_dir: Path | None
) -> Iterator[JsonDict]:
    settings = settings_with(database_url=database_url, artifacts_dir=artifacts_dir)
    engine = build_engine(settings)
    try:
        explanation = build_registry(engine, settings).get(OP_CANARY_EXPLAIN)(cmd, Call())
    except CostsimError as exc:
        err.print(f"[red]{exc.reason}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    for message in convert_explain.messages(explanation):
        yield json_format.MessageToDict(
            message,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )


def explain(
    run_id: Annotated[str, typer.Argument(help="The canary run to explain.")],
    target: Target = "",
    group_by: Annotated[
        str, typer.Option(help=f"Group the steps by {', '.join(GROUP_BYS)} (default skill).")
    ] = "skill",
    top: Annotated[
        int, typer.Option(help=f"Most drifting samples to show, 1 to {MAX_TOP}.")
    ] = DEFAULT_TOP,
    local: Annotated[
        bool, typer.Option("--local", help="Read the database and artifacts in this process.")
    ] = False,
    database_url: DatabaseUrl = None,
    artifacts_dir: Annotated[Path | None, typer.Option(help="With --local: artifact root.")] = None,
    as_json: AsJson = False,
) -> None:
    """Where a run's drift comes from: shares per group, the drifting samples, the histograms."""
    if group_by not in GROUP_BYS:
        err.print(f"[red]--group-by[/red] must be one of {', '.join(GROUP_BYS)}")
        raise typer.Exit(2)
    if not 1 <= top <= MAX_TOP:
        err.print(f"[red]--top[/red] must be between 1 and {MAX_TOP}")
        raise typer.Exit(2)
    if local:
        messages = list(_local(ExplainRun(run_id, group_by, top), database_url, artifacts_dir))
        print_explanation(messages, as_json)
        return
    with connect(target) as client:
        print_explanation(stream(client.explain_run(run_id, group_by=group_by, top=top)), as_json)
