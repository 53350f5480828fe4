"""The ``costsim-analytics`` command line (part of the ``server`` extra)."""

from __future__ import annotations

import sys

# Packages of the server extra that the command line imports; a client-only install lacks them.
_SERVER_PACKAGES = frozenset(
    {"typer", "rich", "sqlalchemy", "alembic", "psycopg", "pydantic", "pydantic_settings"}
    | {"numpy", "scipy", "prometheus_client", "jwt", "cryptography", "grpc_health"}
    | {"grpc_reflection"}
)


def main() -> None:
    """Entry point of the ``costsim-analytics`` script.

    The base install is the client library only: without the ``server`` extra the command line
    says how to get it instead of failing with a traceback.
    """
    try:
        from costsim_analytics.cli.main import main as run
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _SERVER_PACKAGES:
            raise
        print(
            f"costsim-analytics: the command line needs the server extra ({exc.name} is not "
            "installed): pip install 'costsim-analytics[server]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    run()


__all__ = ["main"]
