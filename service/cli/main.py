"""``costsim-analytics``: serve, migrate, and a client for every RPC.

Client commands print tables for people and, with ``--json``, one JSON document per line
for scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main
from google.protobuf import json_format
from opentelemetry import trace
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from costsim_analytics.api.client import ClientSecurity, JsonDict
from costsim_analytics.bootstrap import (
    build_engine,
    build_registry,
    build_security,
    build_server,
    configure_logging,
)
from costsim_analytics.cli import canary, golden, retention, token
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
    library_client,
    out,
    print_page,
    rpc,
    settings_with,
    stream,
    table,
    use_security,
    utc,
)
from costsim_analytics.client import (
    FlushTimeoutError,
    InvalidRecordError,
    PreparedRecord,
    ProvenanceWriter,
    SpoolError,
    WriterClosedError,
    messages,
    prepare_record,
)
from costsim_analytics.drivers import schema
from costsim_analytics.engines.errors import DatabaseUnavailable, SchemaOutOfDate
from costsim_analytics.engines.reports import CANARY_STATUSES
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.registry import OP_PARTITION_UPKEEP
from costsim_analytics.tracing import Tracing, TracingConfigError

# The service name of the command line's spans unless OTEL_SERVICE_NAME says otherwise.
CLI_SERVICE_NAME = "costsim-analytics-cli"

app = typer.Typer(help="costsim-analytics: provenance, drift and canary reports over gRPC.")
provenance_app = typer.Typer(help="Write and query provenance records.")
app.add_typer(provenance_app, name="provenance")


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
) -> None:
    """Serve the gRPC API (and the dashboard on the HTTP side port) until SIGTERM or SIGINT.

    SIGHUP re-reads the policy file and the TLS certificates.
    """
    settings = settings_with(
        database_url=database_url,
        listen=listen,
        artifacts_dir=artifacts_dir,
        max_batch=max_batch,
        http_listen=http_listen,
        insecure=True if insecure else None,
    )
    configure_logging(settings.log_level)
    try:
        security = build_security(settings)
        tracing = Tracing.from_env(os.environ)
    except ValueError as exc:  # the security or tracing settings or files: refuse, say why
        err.print(f"[red]refusing to start[/red]: {exc}")
        raise typer.Exit(2) from None
    if tracing is not None:
        tracing.install_global()
    engine = build_engine(settings)
    try:
        schema.check_schema(engine)
    except SchemaOutOfDate as exc:
        err.print(f"[red]refusing to start[/red]: {exc.message}")
        raise typer.Exit(2) from None
    except DatabaseUnavailable as exc:
        err.print(f"[yellow]database unreachable ({exc.message}); starting NOT_SERVING[/yellow]")

    async def main() -> None:
        server = build_server(engine, settings, security, tracing)

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


# --- client commands ---------------------------------------------------------------------------


def _records(lines: Iterable[str]) -> Iterator[JsonDict]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            err.print(f"[red]line {number}[/red]: not JSON ({exc.msg})")
            raise typer.Exit(1) from None
        if not isinstance(record, dict):
            err.print(f"[red]line {number}[/red]: not a JSON object")
            raise typer.Exit(1)
        yield {"_line": number, **record}


def _prepared(record: JsonDict) -> PreparedRecord:
    """One JSONL line (a ProvenanceRecord in the proto's JSON form) checked and encoded."""
    number = record.pop("_line")
    try:
        message = json_format.ParseDict(record, messages.ProvenanceRecord())
    except json_format.ParseError as exc:
        err.print(f"[red]line {number}[/red]: {exc}")
        raise typer.Exit(1) from None
    fields: dict[str, Any] = {"run_id": "", "variant_slug": "", "source": ""}
    fields.update((f.name, value) for f, value in message.ListFields())
    if "payload" in fields:  # as written in the file: whole numbers stay integers
        fields["payload"] = record.get("payload", json_format.MessageToDict(message.payload))
    if message.id or message.HasField("cost_delta") or message.HasField("created_at"):
        err.print(f"[red]line {number}[/red]: id, cost_delta and created_at are output only")
        raise typer.Exit(1)
    try:
        return prepare_record(**fields)
    except InvalidRecordError as exc:
        err.print(f"[red]line {number}[/red]: {exc.message}")
        for violation in exc.violations:
            err.print(f"  {violation.field}: {violation.description}")
        raise typer.Exit(1) from None


RESUME_FILE = "provenance-write.json"


def _source(file: Path) -> tuple[Callable[[], Iterator[str]], str]:
    """The input's lines (to read twice: checked, then sent) and the SHA-256 of its bytes.

    A file is read twice rather than held in memory; standard input is held.
    """
    if str(file) == "-":
        data = sys.stdin.buffer.read()
        lines = data.decode("utf-8").splitlines()
        return (lambda: iter(lines)), hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with file.open("rb") as raw:
        for block in iter(lambda: raw.read(1 << 20), b""):
            digest.update(block)

    def read() -> Iterator[str]:
        with file.open(encoding="utf-8") as text:
            yield from text

    return read, digest.hexdigest()


def _chunks(lines: Iterable[str], skip: int, size: int) -> Iterator[list[PreparedRecord]]:
    """The records after the first ``skip``, checked and encoded, ``size`` at a time."""
    chunk: list[PreparedRecord] = []
    for number, record in enumerate(_records(lines)):
        if number < skip:
            continue
        chunk.append(_prepared(record))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _resume_point(spool: Path, digest: str, next_seq: int, count: int) -> int:
    """How many of the file's records an earlier run already put in this spool.

    The spool numbers records in the order they were added, so a note of the file's digest and
    of the number its first record got (written before any record is added) says how many of
    them are in: every number since. A different file starts a new note.
    """
    note = spool / RESUME_FILE
    try:
        earlier = json.loads(note.read_text(encoding="utf-8"))
    except FileNotFoundError:
        earlier = None
    if isinstance(earlier, dict) and earlier.get("sha256") == digest:
        return min(max(next_seq - int(earlier["first_seq"]), 0), count)
    tmp = note.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        json.dump({"sha256": digest, "first_seq": next_seq, "records": count}, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, note)
    return 0


@provenance_app.command("write")
def provenance_write(
    file: Annotated[Path, typer.Argument(help="JSONL, one ProvenanceRecord per line; - = stdin")],
    target: Target = "",
    batch_size: Annotated[int, typer.Option(help="Records per request.")] = 1000,
    spool: Annotated[
        Path | None,
        typer.Option(
            help="Durable spool directory: an interrupted write, run again with the same file "
            "and --spool, sends the rest exactly once."
        ),
    ] = None,
    request_id: Annotated[
        str,
        typer.Option(
            help="Without --spool, batch n is sent as PREFIX-n (a re-run replays); with it, "
            "put before every batch's request id."
        ),
    ] = "",
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the server, in all.")
    ] = 300.0,
    as_json: AsJson = False,
) -> None:
    """Write provenance records from a JSONL file through the provenance writer.

    Every record is checked by the server's rules before anything is sent (a bad line stops the
    command, naming it). Batches carry request ids, and are retried until the server has them.
    With --spool, records are kept in the spool directory until the server has them: if the
    command is interrupted (Ctrl-C, a crash, the server away longer than --timeout), the same
    command with the same file and --spool sends what was left and the records not yet added,
    each exactly once. Without --spool, --request-id P sends batch n as P-n, one batch at a time,
    so that a re-run of the same file replays what the first run stored.
    """
    lines, digest = _source(file)
    count = 0
    for record in _records(lines()):  # every line checked before anything is sent
        _prepared(record)
        count += 1
    fixed_ids = bool(request_id) and spool is None
    with library_client(target) as client:
        try:
            writer = ProvenanceWriter(
                client,
                spool=spool,
                max_batch_records=batch_size,
                max_buffer_records=max(20_000, batch_size),
                request_id_prefix=f"{request_id}-" if request_id and not fixed_ids else "",
                source_id=request_id if fixed_ids else "",
                max_delay_s=3600.0 if fixed_ids else 0.2,  # fixed ids: batches by flush only
            )
        except (SpoolError, ValueError) as exc:
            err.print(f"[red]cannot start[/red]: {exc}")
            raise typer.Exit(1) from None
        left = writer.recovery.records if writer.recovery is not None else 0
        if writer.recovery is not None:
            for damage in writer.recovery.damage:
                err.print(
                    f"[yellow]spool damage[/yellow]: {damage.kind} stretch of {damage.length} "
                    f"bytes in {damage.segment} at {damage.offset}, kept in {damage.saved_to}"
                )
        done = 0
        if spool is not None and writer.spool is not None:
            done = _resume_point(spool, digest, writer.spool.next_seq, count)
        deadline = time.monotonic() + timeout_s
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                disable=as_json,
            ) as progress:
                task = progress.add_task("records", total=left + count - done)
                for chunk in _chunks(lines(), done, writer.options.max_batch_records):
                    writer.add_many(chunk)
                    if fixed_ids:  # this chunk is batch n, with request id P-n
                        writer.flush(timeout_s=max(0.0, deadline - time.monotonic()))
                    progress.update(task, completed=writer.metrics().records_sent)
                while writer.metrics().queue_depth and time.monotonic() < deadline:
                    with contextlib.suppress(FlushTimeoutError):
                        writer.flush(timeout_s=0.2)
                    progress.update(task, completed=writer.metrics().records_sent)
                progress.update(task, completed=writer.metrics().records_sent)
            writer.close(timeout_s=max(0.0, deadline - time.monotonic()))
        except (FlushTimeoutError, WriterClosedError, SpoolError) as exc:
            with contextlib.suppress(FlushTimeoutError, WriterClosedError):
                writer.close(timeout_s=0)  # with a spool, what is left stays there
            err.print(f"[red]not all records were written[/red]: {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            with contextlib.suppress(FlushTimeoutError, WriterClosedError):
                writer.close(timeout_s=0)
            err.print("[yellow]interrupted[/yellow]: run again with the same --spool to finish")
            raise typer.Exit(130) from None
    metrics = writer.metrics()
    summary = {
        "records": metrics.records_sent,
        "from_spool": left,
        "already_added": done,
        "batches": metrics.batches_sent,
        "replayed_batches": metrics.batches_replayed,
        "retries": metrics.retries,
        "rejected": metrics.records_rejected,
        "left_in_spool": metrics.queue_depth,
    }
    if as_json:
        print(json.dumps(summary))
    else:
        out.print(
            f"{metrics.records_sent} records written in {metrics.batches_sent} batches"
            + (f" ({left} from the spool)" if left else "")
            + (f", {metrics.retries} retries" if metrics.retries else "")
        )
    if metrics.records_rejected:
        where = "see rejected.jsonl in the spool" if spool else "run with --spool to keep them"
        err.print(f"[red]{metrics.records_rejected} records refused[/red]: {where}")
    if metrics.queue_depth:
        err.print(f"[yellow]{metrics.queue_depth} records stay in the spool[/yellow]")
    if metrics.records_rejected or metrics.queue_depth:
        raise typer.Exit(1)


@provenance_app.command("query")
def provenance_query(
    target: Target = "",
    tenant_id: str = "",
    variant_slug: str = "",
    source: str = "",
    input_hash: str = "",
    run_id: str = "",
    start: Start = None,
    end: End = None,
    limit: Limit = 0,
    page_token: PageToken = "",
    as_json: AsJson = False,
) -> None:
    """Stream provenance records, newest first."""
    with connect(target) as client:
        items = stream(
            client.query_provenance(
                tenant_id=tenant_id,
                variant_slug=variant_slug,
                source=source,
                input_hash=input_hash,
                run_id=run_id,
                start=utc(start),
                end=utc(end),
                page_size=limit,
                page_token=page_token,
            )
        )
        keys = ("created_at", "run_id", "tenant_id", "variant_slug", "v1_cost", "v2_cost")
        print_page(
            items,
            as_json,
            key="record",
            title="provenance",
            columns=["id", "created_at", "run_id", "tenant", "variant", "v1", "v2", "delta"],
            row=lambda r: [r["id"], *map(r.get, keys), r.get("cost_delta")],
        )


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
