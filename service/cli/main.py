"""``costsim-analytics``: serve, migrate, and a client for every RPC.

Client commands print tables for people and, with ``--json``, one JSON document per line
for scripts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import typer.main
from opentelemetry import trace
from sqlalchemy.engine import make_url

from costsim_analytics.api.client import ClientSecurity
from costsim_analytics.api.supervisor import die_with_parent, supervise
from costsim_analytics.bootstrap import (
    build_registry,
    build_security,
    build_server,
    configure_logging,
)
from costsim_analytics.cli import canary, golden, provenance, retention, token
from costsim_analytics.cli.common import (
    AsJson,
    DatabaseUrl,
    End,
    Limit,
    PageToken,
    Start,
    Target,
    connect,
    err,
    out,
    print_page,
    rpc,
    settings_with,
    stream,
    table,
    use_security,
    utc,
)
from costsim_analytics.drivers import schema
from costsim_analytics.engines.errors import DatabaseUnavailable, SchemaOutOfDate
from costsim_analytics.engines.reports import CANARY_STATUSES
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import OP_PARTITION_UPKEEP
from costsim_analytics.pools import build_engine
from costsim_analytics.settings import Settings
from costsim_analytics.tracing import Tracing, TracingConfigError

# The service name of the command line's spans unless OTEL_SERVICE_NAME says otherwise.
CLI_SERVICE_NAME = "costsim-analytics-cli"

app = typer.Typer(help="costsim-analytics: provenance, drift and canary reports over gRPC.")


@app.callback()
def client_options(
    token: Annotated[
        str, typer.Option(envvar="COSTSIM_TOKEN", help="Bearer token for client commands.")
    ] = "",
    token_file: Annotated[
        Path | None,
        typer.Option(envvar="COSTSIM_TOKEN_FILE", help="File holding the token (re-read)."),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(envvar="COSTSIM_CLIENT_TLS_CA", help="CA to trust: the server speaks TLS."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(envvar="COSTSIM_CLIENT_TLS_CERT", help="Client certificate (mTLS)."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="COSTSIM_CLIENT_TLS_KEY", help="Its private key.")
    ] = None,
) -> None:
    """costsim-analytics: provenance, drift and canary reports over gRPC.

    The options here (before the command) are how client commands reach a secured server.
    """
    use_security(ClientSecurity(tls_ca, tls_cert, tls_key, token, token_file))


app.add_typer(provenance.app, name="provenance")
app.add_typer(canary.app, name="canary")
app.add_typer(golden.app, name="golden")
app.add_typer(token.app, name="token")
app.command("retention")(retention.retention)


# --- operations -------------------------------------------------------------------------------


@app.command()
def migrate(database_url: DatabaseUrl = None) -> None:
    """Apply the Alembic revisions to the configured database."""
    settings = settings_with(database_url=database_url)
    configure_logging("WARNING")
    try:
        schema.upgrade(settings.database_url)
        engine = build_engine(settings)
        try:
            upkeep = build_registry(engine, settings).get(OP_PARTITION_UPKEEP)
            created = upkeep(None, Call()).created
        finally:
            engine.dispose()
    except Exception as exc:
        err.print(f"[red]migration failed[/red]: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc
    out.print(f"database at revision {schema.head_revision()}")
    if created:
        out.print(f"created provenance partitions: {', '.join(created)}")


@app.command()
def serve(
    database_url: DatabaseUrl = None,
    listen: Annotated[str | None, typer.Option(help="Overrides COSTSIM_LISTEN.")] = None,
    artifacts_dir: Annotated[
        Path | None, typer.Option(help="Overrides COSTSIM_ARTIFACTS_DIR.")
    ] = None,
    max_batch: Annotated[int | None, typer.Option(help="Overrides COSTSIM_MAX_BATCH.")] = None,
    http_listen: Annotated[
        str | None, typer.Option(help="Overrides COSTSIM_HTTP_LISTEN; 'off' turns it off.")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Allow the insecure mode (no policy or no TLS) on a non-loopback address; "
            "sets COSTSIM_INSECURE.",
        ),
    ] = False,
    processes: Annotated[
        str | None, typer.Option(help="Overrides COSTSIM_PROCESSES (1 to 64, or auto).")
    ] = None,
    worker_of: Annotated[int | None, typer.Option("--worker-of", hidden=True)] = None,
) -> None:
    """Serve the gRPC API (and the dashboard on the HTTP side port) until SIGTERM or SIGINT.

    SIGHUP re-reads the policy file and the TLS certificates. With more than one process
    (--processes), a parent supervises that many servers on the same ports.
    """
    overrides: dict[str, object] = {
        "database_url": database_url,
        "listen": listen,
        "artifacts_dir": artifacts_dir,
        "max_batch": max_batch,
        "http_listen": http_listen,
        "insecure": True if insecure else None,
    }
    settings = settings_with(**overrides, processes=processes)
    configure_logging(settings.log_level)
    if worker_of is not None:  # one of the processes a parent supervises (api/supervisor.py)
        die_with_parent(worker_of)
    supervising = worker_of is None and settings.processes > 1
    if supervising and make_url(settings.database_url).get_backend_name() == "sqlite":
        err.print(
            f"[red]refusing to start[/red]: COSTSIM_PROCESSES={settings.processes} needs "
            "PostgreSQL: a SQLite database is one file with one writer at a time, so more "
            "processes would only queue on its lock; set COSTSIM_PROCESSES=1"
        )
        raise typer.Exit(2)
    try:
        security = build_security(settings)
        tracing = Tracing.from_env(os.environ)
    except ValueError as exc:  # the security or tracing settings or files: refuse, say why
        err.print(f"[red]refusing to start[/red]: {exc}")
        raise typer.Exit(2) from None
    if tracing is not None and not supervising:
        tracing.install_global()
    engine = build_engine(settings)
    try:
        schema.check_schema(engine)
    except SchemaOutOfDate as exc:
        err.print(f"[red]refusing to start[/red]: {exc.message}")
        raise typer.Exit(2) from None
    except DatabaseUnavailable as exc:
        err.print(f"[yellow]database unreachable ({exc.message}); starting NOT_SERVING[/yellow]")
    if supervising:
        engine.dispose()
        if tracing is not None:  # each process traces its own calls
            tracing.shutdown()
        serve_processes(settings, overrides)

    async def main() -> None:
        server = build_server(engine, settings, security, tracing, reuse_port=worker_of is not None)

        def ready(address: str) -> None:
            if server.http_url:
                print(f"costsim-analytics dashboard on {server.http_url}", flush=True)
            print(f"costsim-analytics listening on {address}", flush=True)

        await server.run(on_ready=ready)

    try:
        asyncio.run(main())
    except OSError as exc:  # an address in use or not available
        err.print(f"[red]cannot start[/red]: {exc}")
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
        if tracing is not None:
            tracing.shutdown()


def serve_processes(settings: Settings, overrides: dict[str, object]) -> NoReturn:
    """Supervise ``settings.processes`` servers on the configured ports; exit with its status."""
    from costsim_analytics.api.server import SETTLE_S

    try:
        code = supervise(
            settings.processes,
            listen=settings.listen,
            http_listen=settings.http_listen,
            overrides=overrides,
            # A child's drain (the grace, then the settling of cancelled calls), with room.
            drain_timeout_s=settings.grace_period_s + SETTLE_S + 10.0,
        )
    except OSError as exc:  # an address in use or not available
        err.print(f"[red]cannot start[/red]: {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


# --- client commands ---------------------------------------------------------------------------


@app.command("drift-stats")
def drift_stats(
    target: Target = "",
    tenant_id: str = "",
    variant_slug: str = "",
    start: Start = None,
    end: End = None,
    as_json: AsJson = False,
) -> None:
    """Summarise cost_delta (v2 - v1) over stored provenance."""
    with connect(target) as client:
        stats = rpc(
            lambda: client.drift_stats(
                tenant_id=tenant_id, variant_slug=variant_slug, start=utc(start), end=utc(end)
            )
        )
    if as_json:
        print(json.dumps(stats))
    else:
        table("drift statistics", ["statistic", "value"], [[k, v] for k, v in stats.items()])


@app.command()
def reports(
    target: Target = "",
    status: Annotated[str, typer.Option(help="pass, fail, error, skipped or inconclusive")] = "",
    passed: Annotated[bool | None, typer.Option("--passed/--failed", show_default=False)] = None,
    start: Start = None,
    end: End = None,
    limit: Limit = 0,
    page_token: PageToken = "",
    as_json: AsJson = False,
) -> None:
    """Stream canary reports, newest first."""
    if status and status not in CANARY_STATUSES:
        err.print("[red]--status[/red] must be pass, fail, error, skipped or inconclusive")
        raise typer.Exit(2)
    with connect(target) as client:
        items = stream(
            client.query_reports(
                status=status,
                passed=passed,
                start=utc(start),
                end=utc(end),
                page_size=limit,
                page_token=page_token,
            )
        )
        print_page(
            items,
            as_json,
            key="report",
            title="canary reports",
            columns=["run_id", "timestamp", "status", "passed", "samples", "kl", "reasons"],
            row=lambda r: [
                r.get("run_id"),
                r.get("timestamp"),
                r.get("status", "").removeprefix("CANARY_STATUS_").lower(),
                r.get("passed", False),
                r.get("total_samples", 0),
                r.get("kl_divergence"),
                "; ".join(r.get("failure_reasons", [])),
            ],
        )


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="The canary run id.")],
    target: Target = "",
    as_json: AsJson = False,
) -> None:
    """Show one canary report."""
    with connect(target) as client:
        found = rpc(lambda: client.get_report(run_id))
    if as_json:
        print(json.dumps(found))
    else:
        table(f"canary report {run_id}", ["field", "value"], [[k, v] for k, v in found.items()])


def command_path(argv: Sequence[str]) -> tuple[str, ...]:
    """The (sub)command names in ``argv``, as the command line resolves them.

    Example:
        >>> command_path(["--token", "t", "canary", "run", "--local"])
        ('canary', 'run')

    """
    group: Any = typer.main.get_command(app)
    path: list[str] = []
    for word in argv:
        commands = getattr(group, "commands", None)
        if commands is None:
            break
        if word in commands:
            path.append(word)
            group = commands[word]
    return tuple(path)


def main() -> None:
    """Entry point of the ``costsim-analytics`` script.

    With tracing configured (the ``OTEL_*`` variables, README "Tracing"), each command but
    ``serve`` (which traces its RPCs instead) is the root span of its trace, and the calls it
    makes carry its ``traceparent``.
    """
    path = command_path(sys.argv[1:])
    if path[:1] == ("serve",):
        app()
        return
    try:
        tracing = Tracing.from_env(os.environ, CLI_SERVICE_NAME)
    except TracingConfigError as exc:
        err.print(f"[red]tracing[/red]: {exc}")
        raise SystemExit(2) from None
    if tracing is None:
        app()
        return
    tracing.install_global()
    span = tracing.tracer().start_span(
        " ".join(("costsim-analytics", *path)),
        attributes={"costsim.cli.command": " ".join(path)},
    )
    try:
        with trace.use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            app()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        span.set_attribute("process.exit.code", code)
        if code:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"exit status {code}"))
        raise
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        span.end()
        tracing.shutdown()
