"""Names shared by every artifact store: run ids and the relative paths reports record."""

from __future__ import annotations


def check_run_id(run_id: str) -> str:
    """``run_id`` when it can name a folder or key prefix (no separator, no leading dot).

    Run ids are generated (``handlers/canary.new_run_id``), but reads take them from callers.

    Raises:
        ValueError: an empty id, one with a slash or a backslash, or one starting with a dot.
    """
    if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        raise ValueError(f"not a run id: {run_id!r}")
    return run_id


def relative_path(run_id: str, name: str) -> str:
    """An artifact's path as reports name it: relative to the store's root, on any backend.

    Example:
        >>> relative_path("canary-20260101-000000-ab12", "report.json")
        'canary-20260101-000000-ab12/report.json'

    """
    return f"{run_id}/{name}"
