"""Canary artifacts on a local file system (or a shared one), written atomically with checksums.

Layout: ``<root>/<run_id>/{comparisons.jsonl, diffs.jsonl, report.json}``. Each file is written
to a temporary name in the same directory, fsynced, renamed into place, and the directory is
fsynced, so a crash leaves either the whole file or none of it. ``report.json`` is written last
and names the checksums of the others: a run directory without it is incomplete and ignored.

References name a file relative to the root (``<run_id>/<name>``), so that no absolute server
path reaches a caller; reports stored before that name absolute paths, which still resolve.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from costsim_analytics.drivers.artifacts.keys import check_run_id, relative_path
from costsim_analytics.engines.canary.evaluation import REPORT_FILE
from costsim_analytics.engines.reports import ArtifactRef


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArtifactStore:
    """Artifacts under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    @property
    def location(self) -> str:
        """Where the artifacts are, for logs: the root directory."""
        return str(self.root)

    def run_dir(self, run_id: str) -> Path:
        """The directory of one run (run ids are generated: no path separators)."""
        return self.root / check_run_id(run_id)

    def save(self, run_id: str, files: Mapping[str, bytes]) -> tuple[ArtifactRef, ...]:
        """Write every file atomically, in the given order; return their references.

        Raises:
            OSError: a file could not be written; files already renamed into place stay.
        """
        directory = self.run_dir(run_id)
        directory.mkdir(parents=True, exist_ok=True)
        refs = []
        for name, data in files.items():
            final = directory / name
            temp = directory / f".{name}.{uuid.uuid4().hex}.tmp"
            try:
                with temp.open("wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, final)
            finally:
                temp.unlink(missing_ok=True)
            digest = hashlib.sha256(data).hexdigest()
            refs.append(ArtifactRef(relative_path(run_id, name), digest, len(data)))
        _fsync_dir(directory)
        return tuple(refs)

    def runs(self) -> Iterator[str]:
        """Run ids whose report artifact is complete, oldest name first."""
        if not self.root.is_dir():
            return
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and (entry / REPORT_FILE).is_file():
                yield entry.name

    def read(self, run_id: str, name: str) -> bytes:
        """The bytes of one artifact."""
        return (self.run_dir(run_id) / name).read_bytes()

    def remove(self, run_id: str) -> bool:
        """Delete a run's artifact folder; False when there was none."""
        directory = self.run_dir(run_id)
        if not directory.exists():
            return False
        shutil.rmtree(directory)
        return True

    def ref(self, run_id: str, name: str) -> ArtifactRef:
        """The reference (path, checksum, size) of an existing artifact."""
        data = (self.run_dir(run_id) / name).read_bytes()
        return ArtifactRef(relative_path(run_id, name), hashlib.sha256(data).hexdigest(), len(data))

    def locate(self, path: str) -> Path:
        """Where a reference's path is: under the root, or as is for an old absolute one."""
        found = Path(path)
        return found if found.is_absolute() else self.root / found

    def verify(self, ref: ArtifactRef) -> bool:
        """True when the file exists with the recorded size and checksum."""
        try:
            data = self.locate(ref.path).read_bytes()
        except OSError:
            return False
        return len(data) == ref.size_bytes and hashlib.sha256(data).hexdigest() == ref.sha256
