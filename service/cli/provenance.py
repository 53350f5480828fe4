"""``costsim-analytics provenance``: write records through the durable writer, and query them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from costsim_analytics.api.client import JsonDict
from costsim_analytics.cli.common import (
    AsJson,
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
    stream,
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

app = typer.Typer(help="Write and query provenance records.")


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


@app.command("write")
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


@app.command("query")
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
