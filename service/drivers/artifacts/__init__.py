"""Artifact stores: a local directory (``local``) and an S3-compatible object store (``s3``).

Both implement ``handlers.ports.ArtifactStore`` with the same invariants: each artifact is
published whole or not at all, with its SHA-256; ``report.json`` is written last; a run folder
(key prefix) without it is incomplete and ignored; references are relative
(``<run_id>/<name>``), so a report does not depend on the backend it was written to.
``bootstrap.artifact_store`` picks one from the settings. ``s3`` imports boto3: it is imported
only when an ``s3://`` URL is configured.
"""

from costsim_analytics.drivers.artifacts.keys import check_run_id, relative_path
from costsim_analytics.drivers.artifacts.local import LocalArtifactStore

__all__ = ["LocalArtifactStore", "check_run_id", "relative_path"]
