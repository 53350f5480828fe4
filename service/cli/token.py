"""``costsim-analytics token mint``: an HS256 bearer token for local testing and scripts.

It signs with the same secret file the server reads (``COSTSIM_JWT_HS256_SECRET_FILE``), so
on a laptop::

    head -c 32 /dev/urandom | base64 > var/jwt.secret
    export COSTSIM_JWT_HS256_SECRET_FILE=var/jwt.secret
    costsim-analytics token mint --sub ci-nightly --secret-file var/jwt.secret

Production setups should mint with their identity provider and verify with a JWKS instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from costsim_analytics.auth.tokens import KeyConfigError, mint_token, read_secret_file
from costsim_analytics.cli.common import err

app = typer.Typer(help="Bearer tokens for local testing (HS256, signed with a secret file).")


def _claims(pairs: list[str]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            err.print(f"[red]--claim {pair!r}[/red]: must be NAME=VALUE")
            raise typer.Exit(2)
        try:  # numbers, booleans and lists as JSON; anything else as a string
            claims[name] = json.loads(value)
        except json.JSONDecodeError:
            claims[name] = value
    return claims


@app.command()
def mint(
    sub: Annotated[str, typer.Option("--sub", help="The identity (policy id) the token names.")],
    secret_file: Annotated[
        Path, typer.Option("--secret-file", help="HS256 secret; one trailing newline stripped.")
    ],
    ttl: Annotated[int, typer.Option("--ttl", min=1, help="Seconds until it expires.")] = 3600,
    audience: Annotated[
        str, typer.Option("--audience", envvar="COSTSIM_JWT_AUDIENCE", help="The aud claim.")
    ] = "costsim-analytics",
    issuer: Annotated[
        str, typer.Option("--issuer", envvar="COSTSIM_JWT_ISSUER", help="The iss claim, if any.")
    ] = "",
    claim: Annotated[
        list[str] | None, typer.Option("--claim", help="Extra claim NAME=VALUE (repeatable).")
    ] = None,
) -> None:
    """Print a signed token for --sub on stdout."""
    if not sub.strip():
        err.print("[red]--sub[/red] must not be empty")
        raise typer.Exit(2)
    try:
        token = mint_token(
            sub, read_secret_file(secret_file), audience, ttl, issuer or None, _claims(claim or [])
        )
    except KeyConfigError as exc:
        err.print(f"[red]cannot mint[/red]: {exc}")
        raise typer.Exit(2) from None
    print(token)
