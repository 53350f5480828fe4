"""``costsim-analytics retention``: drop old provenance, delete old reports and artifacts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from costsim_analytics.bootstrap import build_registry
from costsim_analytics.cli.common import AsJson, DatabaseUrl, err, out, settings_with, table
from costsim_analytics.engines.errors import CostsimError
from costsim_analytics.engines.retention import RetentionPolicy
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import OP_RETENTION
from costsim_analytics.pools import build_engine


def retention(
    provenance_days: Annotated[
        int | None, typer.Option(min=1, help="Keep provenance this many days (whole months).")
    ] = None,
    reports_days: Annotated[
        int | None, typer.Option(min=1, help="Keep canary reports and artifacts this many days.")
    ] = None,
    idempotency_days: Annotated[
        int | None, typer.Option(min=1, help="Keep idempotency keys this many days.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would go; remove nothing.")] = False,
    database_url: DatabaseUrl = None,
    artifacts_dir: Annotated[Path | None, typer.Option(help="Canary artifact root.")] = None,
    as_json: AsJson = False,
) -> None:
    """Remove data older than the given ages and report what was removed."""
    settings = settings_with(database_url=database_url, artifacts_dir=artifacts_dir)
    engine = build_engine(settings)
    policy = RetentionPolicy(provenance_days, reports_days, idempotency_days, dry_run)
    try:
        result = build_registry(engine, settings).get(OP_RETENTION)(policy, Call())
    except CostsimError as exc:
        err.print(f"[red]{exc.reason}[/red]: {exc.message}")
        raise typer.Exit(2 if exc.reason.startswith("INVALID") else 1) from None
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps(asdict(result)))
        return
    verb = "would remove" if dry_run else "removed"
    rows = [
        [f"partition {name}", f"{count:,} rows"] for name, count in result.provenance_partitions
    ]
    rows += [
        [f"partition {name}", "in use: left for the next pass"]
        for name in result.provenance_partitions_deferred
    ]
    rows += [
        ["provenance rows deleted", f"{result.provenance_rows_deleted:,}"],
        ["canary reports", f"{len(result.reports_deleted):,}"],
        ["artifact folders", f"{result.artifact_dirs_removed:,}"],
        ["idempotency keys", f"{result.idempotency_keys_deleted:,}"],
    ]
    rows += [[f"cutoff ({kind})", cutoff] for kind, cutoff in result.cutoffs.items()]
    table(f"retention: {verb}", ["what", "how much"], rows)
    if not rows:
        out.print("nothing to do")
