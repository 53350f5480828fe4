"""Pieces shared by the CLI's command modules: consoles, options, error printing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import grpc
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from costsim_analytics.api.client import AnalyticsClient, ClientSecurity, JsonDict
from costsim_analytics.client import AnalyticsClient as Client
from costsim_analytics.client import Credentials
from costsim_analytics.settings import Settings

out = Console()
err = Console(stderr=True)
T = TypeVar("T")

DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", help="Overrides COSTSIM_DATABASE_URL.")
]
Target = Annotated[
    str,
    typer.Option(
        "--target",
        envvar="COSTSIM_TARGET",
        help="Server address (default: COSTSIM_LISTEN or 127.0.0.1:50051).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
Start = Annotated[datetime | None, typer.Option("--start", help="Inclusive lower bound, UTC.")]
End = Annotated[datetime | None, typer.Option("--end", help="Exclusive upper bound, UTC.")]
Limit = Annotated[int, typer.Option("--limit", help="Messages to fetch (0: server default).")]
PageToken = Annotated[str, typer.Option("--page-token", help="Resume after this token.")]


def default_target() -> str:
    """The server address when --target is not given."""
    return os.environ.get("COSTSIM_LISTEN", "127.0.0.1:50051")


# The options given before the command (one command per process: set once, by the callback).
_security = [ClientSecurity()]


def use_security(security: ClientSecurity) -> None:
    """Make client commands connect with ``security`` (the root callback's options)."""
    _security[0] = security


def connect(target: str | None) -> AnalyticsClient:
    """A client for ``target`` with the TLS and token options given before the command."""
    return AnalyticsClient(target or default_target(), security=_security[0])


def library_client(target: str | None) -> Client:
    """The client library's client for ``target``, with the options given before the command."""
    security = _security[0]
    credentials = Credentials(
        token=security.token,
        token_file=security.token_file,
        ca_file=security.ca,
        cert_file=security.cert,
        key_file=security.key,
    )
    return Client(target or default_target(), credentials=credentials)


def settings_with(**overrides: Any) -> Settings:
    """Settings from the environment, with the flags that were given on top.

    Invalid or conflicting settings end the command (exit 2) with each problem on a line.
    """
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        err.print("[red]invalid settings[/red]:")
        for problem in exc.errors():
            where = ".".join(map(str, problem["loc"])) or "settings"
            name = f"COSTSIM_{where.upper()}" if problem["loc"] else where
            err.print(f"  {name}: {problem['msg']}")
        raise typer.Exit(2) from None


def utc(value: datetime | None) -> datetime | None:
    """A naive command-line datetime taken as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def rpc(call: Callable[[], T]) -> T:
    """Run a client call; print a gRPC error readably and exit 1."""
    try:
        return call()
    except grpc.RpcError as exc:
        print_rpc_error(exc)
        raise typer.Exit(1) from None


def print_rpc_error(exc: grpc.RpcError) -> None:
    """Code, message and every field violation of a failed call."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    err.print(f"[red]error[/red] {code.name if code else 'UNKNOWN'}: {details}")
    status = rpc_status.from_call(exc) if isinstance(exc, grpc.Call) else None
    details_list: list[Any] = list(status.details) if status else []
    for detail in details_list:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for violation in bad.field_violations:
                err.print(f"  {violation.field}: {violation.description}")


def stream(items: Iterator[T]) -> Iterator[T]:
    """Iterate a server stream; print a gRPC error readably and exit 1."""
    try:
        yield from items
    except grpc.RpcError as exc:
        print_rpc_error(exc)
        raise typer.Exit(1) from None


def print_page(
    items: Iterator[JsonDict],
    as_json: bool,
    *,
    key: str,
    title: str,
    columns: list[str],
    row: Callable[[JsonDict], list[Any]],
) -> None:
    """A streamed page: one JSON line per message, or a table and the token to resume after it.

    ``key`` names each message's payload and ``row`` turns a payload into its table cells.
    """
    if as_json:
        for item in items:
            print(json.dumps(item))
        return
    last = ""
    rows = []
    for item in items:
        last = item["page_token"]
        rows.append(row(item[key]))
    table(title, columns, rows)
    if last:
        # Plain print: rich would wrap the token at the terminal width.
        print(f"next page: --page-token {last}")


def table(title: str, columns: list[str], rows: Iterable[list[Any]]) -> None:
    """Print a table for people."""
    view = Table(title=title)
    for column in columns:
        view.add_column(column)
    for row in rows:
        view.add_row(*("" if v is None else str(v) for v in row))
    out.print(view)
