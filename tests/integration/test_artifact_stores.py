"""The artifact store contract on both backends: a local directory and a real S3-compatible
server (moto's, started locally by the ``s3_server`` fixture).

Checksums, atomic publication (a failure between objects or a body damaged on the way leaves no
partial object under a final key, and no run without ``report.json`` is listed), listing past
1,000 keys, removal, and the errors: missing, refused, unreachable. Then the canary handlers
on an S3 store over real SQLite and PostgreSQL: the artifacts-before-row invariant when the
store fails or is unreachable, reconcile and retention.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from costsim_analytics.drivers.artifacts import LocalArtifactStore
from costsim_analytics.drivers.artifacts.s3 import ArtifactStoreRefused, S3ArtifactStore
from costsim_analytics.drivers.locks import canary_lock
from costsim_analytics.engines.canary.command import RunCanary
from costsim_analytics.engines.canary.evaluation import Sample
from costsim_analytics.engines.canary.synthetic import synthetic_samples
from costsim_analytics.engines.errors import ArtifactStoreUnavailable
from costsim_analytics.engines.maintenance import Reconcile
from costsim_analytics.engines.reports import ArtifactRef, ReportFilter
from costsim_analytics.engines.retention import RetentionPolicy
from costsim_analytics.handlers.call import Call
from costsim_analytics.handlers.canary import (
    ArtifactsUnwritable,
    CanaryRunHandler,
    ReconcileHandler,
)
from costsim_analytics.handlers.ports import ArtifactStore
from costsim_analytics.handlers.registry import OP_CANARY_RUN
from costsim_analytics.handlers.retention import RetentionHandler
from costsim_analytics.handlers.uow import SqlAlchemyUnitOfWorkFactory
from tests.s3 import MotoServer, free_port
from tests.seam import served

RUN = "canary-20261126T060000Z-0a1b2c3d"
FILES = {"comparisons.jsonl": b'{"id": 1}\n' * 50, "diffs.jsonl": b"", "report.json": b"{}"}
NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
EXPLICIT = tuple(Sample(i, p) for i, p in synthetic_samples()[:40])


@dataclass
class Backend:
    """One store and a raw view of what it holds, to tamper with and look behind it."""

    store: ArtifactStore
    put_raw: Callable[[str, str, bytes], None]
    names: Callable[[str], list[str]]
    fail_on: Callable[[str], None]  # the next write of this artifact name fails


def local_backend(root: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    def put_raw(run_id: str, name: str, data: bytes) -> None:
        (root / run_id).mkdir(parents=True, exist_ok=True)
        (root / run_id / name).write_bytes(data)

    def names(run_id: str) -> list[str]:
        folder = root / run_id
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def fail_on(name: str) -> None:
        real = os.replace

        def replace(src: Any, dst: Any) -> None:
            if Path(dst).name == name:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(src, dst)

        monkeypatch.setattr("costsim_analytics.drivers.artifacts.local.os.replace", replace)

    return Backend(LocalArtifactStore(root), put_raw, names, fail_on)


def s3_backend(server: MotoServer, **store_kw: Any) -> Backend:
    bucket = server.new_bucket()
    client = server.client(retries={"mode": "standard", "total_max_attempts": 1})
    store = S3ArtifactStore(client, bucket, "team/canary", **store_kw)
    raw = server.client()

    def put_raw(run_id: str, name: str, data: bytes) -> None:
        raw.put_object(Bucket=bucket, Key=store.key(run_id, name), Body=data)

    def names(run_id: str) -> list[str]:
        listed = raw.list_objects_v2(Bucket=bucket, Prefix=f"team/canary/{run_id}/")
        return sorted(o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", []))

    def fail_on(name: str) -> None:
        def refuse(request: Any, **_: Any) -> None:
            if request.url.split("?")[0].endswith(f"/{name}"):
                raise EndpointConnectionError(endpoint_url=request.url)

        client.meta.events.register("before-send.s3.PutObject", refuse)

    return Backend(store, put_raw, names, fail_on)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return local_backend(tmp_path / "artifacts", request.getfixturevalue("monkeypatch"))
    return s3_backend(request.getfixturevalue("s3_server"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the contract ------------------------------------------------------------------------------


def test_save_read_verify_round_trip(backend):
    store = backend.store
    refs = store.save(RUN, FILES)
    assert refs == tuple(ArtifactRef(f"{RUN}/{n}", sha(d), len(d)) for n, d in FILES.items())
    assert all(store.verify(r) for r in refs)
    assert {n: store.read(RUN, n) for n in FILES} == FILES
    assert store.ref(RUN, "report.json") == refs[2]
    assert list(store.runs()) == [RUN]
    assert backend.names(RUN) == sorted(FILES)  # no temporary object left beside them


def test_a_corrupt_or_missing_artifact_is_detected(backend):
    store = backend.store
    refs = store.save(RUN, FILES)
    backend.put_raw(RUN, "comparisons.jsonl", b'{"id": 2}\n' * 50)  # same size, other bytes
    assert not store.verify(refs[0])
    assert store.verify(refs[2])
    assert not store.verify(ArtifactRef(f"{RUN}/gone.jsonl", refs[0].sha256, refs[0].size_bytes))
    with pytest.raises(FileNotFoundError):
        store.read(RUN, "gone.jsonl")
    with pytest.raises(ValueError, match="not a run id"):
        store.read("../elsewhere", "report.json")


def test_a_failure_between_objects_leaves_no_partial_object_and_no_listed_run(backend):
    store = backend.store
    backend.fail_on("diffs.jsonl")
    with pytest.raises((OSError, ArtifactStoreUnavailable)):
        store.save(RUN, FILES)
    # The first object is whole; the failed one is not there under its final key, nor a temp.
    assert backend.names(RUN) == ["comparisons.jsonl"]
    assert store.read(RUN, "comparisons.jsonl") == FILES["comparisons.jsonl"]
    assert list(store.runs()) == []  # no report.json: incomplete, ignored
    assert store.remove(RUN) is True
    assert backend.names(RUN) == []
    assert store.remove(RUN) is False


def test_runs_lists_only_complete_runs(backend):
    store = backend.store
    store.save("canary-b", FILES)
    store.save("canary-a", FILES)
    store.save("canary-c", {"comparisons.jsonl": b"x"})  # never got its report.json
    assert list(store.runs()) == ["canary-a", "canary-b"]


# --- S3 specifics ---------------------------------------------------------------------------


def test_s3_a_body_damaged_on_the_way_is_caught_and_removed(s3_server):
    backend = s3_backend(s3_server)
    store = backend.store
    assert isinstance(store, S3ArtifactStore)

    def damage(request: Any, **_: Any) -> None:
        if request.url.split("?")[0].endswith("/comparisons.jsonl"):
            body = request.body
            data = body.read() if hasattr(body, "read") else bytes(body)
            request.body = data[:-2] + b"X\n"  # same length, other bytes: only a hash sees it

    store.client.meta.events.register("before-send.s3.PutObject", damage)
    with pytest.raises(OSError, match="did not verify"):
        store.save(RUN, FILES)
    assert backend.names(RUN) == []


def test_s3_lists_past_one_thousand_keys(s3_server):
    """1,010 complete runs (1,020 keys) in three pages of ``runs``' listing."""
    backend = s3_backend(s3_server)
    store = backend.store
    run_ids = [f"canary-{i:05d}" for i in range(1010)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda r: backend.put_raw(r, "report.json", b"{}"), run_ids))
    for r in run_ids[:10]:
        backend.put_raw(r, "comparisons.jsonl", b"x")
    backend.put_raw("canary-99999", "diffs.jsonl", b"x")  # incomplete
    assert list(store.runs()) == run_ids


def test_s3_remove_pages_through_a_run_of_many_objects(s3_server):
    backend = s3_backend(s3_server, page_size=7)
    store = backend.store
    for i in range(20):
        backend.put_raw(RUN, f"part-{i:02d}.jsonl", b"x")
    backend.put_raw("canary-other", "report.json", b"{}")
    assert store.remove(RUN) is True
    assert backend.names(RUN) == []
    assert list(store.runs()) == ["canary-other"]  # a neighbour's prefix is untouched


def test_s3_a_missing_bucket_is_refused_not_unavailable(s3_server):
    store = S3ArtifactStore(s3_server.client(), "costsim-no-such-bucket", "x")
    with pytest.raises(ArtifactStoreRefused, match="NoSuchBucket"):
        store.save(RUN, FILES)
    with pytest.raises(ArtifactStoreRefused, match="NoSuchBucket"):
        store.read(RUN, "report.json")


def unreachable_store() -> S3ArtifactStore:
    """A store whose endpoint is a loopback port nothing listens on."""
    server = MotoServer.__new__(MotoServer)
    server.endpoint = f"http://127.0.0.1:{free_port()}"
    client = server.client(
        connect_timeout=1, read_timeout=1, retries={"mode": "standard", "total_max_attempts": 2}
    )
    return S3ArtifactStore(client, "costsim-artifacts", "p")


def test_s3_an_unreachable_store_is_unavailable_on_every_operation():
    store = unreachable_store()
    with pytest.raises(ArtifactStoreUnavailable) as exc:
        store.save(RUN, FILES)
    assert "127.0.0.1" not in exc.value.message  # the endpoint stays in the server's log
    for operation in (
        lambda: store.read(RUN, "report.json"),
        lambda: list(store.runs()),
        lambda: store.remove(RUN),
    ):
        with pytest.raises(ArtifactStoreUnavailable):
            operation()
    # verify answers False for a missing or altered artifact only; unreachable is not that.
    with pytest.raises(ArtifactStoreUnavailable):
        store.verify(ArtifactRef(f"{RUN}/report.json", "0" * 64, 2))


# --- the handlers on an S3 store, over real SQLite and PostgreSQL -------------------------------


@pytest.fixture
def s3_store(s3_server) -> S3ArtifactStore:
    store = s3_backend(s3_server).store
    assert isinstance(store, S3ArtifactStore)
    return store


def canary(engine, store: ArtifactStore, tmp_path: Path) -> Callable[..., Any]:
    handler = CanaryRunHandler(
        SqlAlchemyUnitOfWorkFactory(engine),
        store,
        lambda: canary_lock(engine, tmp_path),
        lock_timeout_s=0.2,
        clock=lambda: NOW,
    )
    return served(OP_CANARY_RUN, handler, handler.uow_factory)


def rows(engine) -> list[Any]:
    with SqlAlchemyUnitOfWorkFactory(engine)(read_only=True) as uow:
        return [r for chunk in uow.reports.stream(ReportFilter(), None, 1000) for r in chunk]


def objects(store: S3ArtifactStore) -> list[str]:
    listed = store.client.list_objects_v2(Bucket=store.bucket)
    return [o["Key"] for o in listed.get("Contents", [])]


def test_a_run_on_s3_writes_verified_objects_then_the_row(engine, s3_store, tmp_path):
    report = canary(engine, s3_store, tmp_path)(RunCanary(samples=EXPLICIT, seed=3)).report
    [stored] = rows(engine)
    assert stored.artifacts == report.artifacts
    assert [a.path for a in stored.artifacts] == [
        f"{report.run_id}/{n}" for n in ("comparisons.jsonl", "diffs.jsonl", "report.json")
    ]
    assert all(s3_store.verify(a) for a in stored.artifacts)
    assert sorted(objects(s3_store)) == sorted(f"team/canary/{a.path}" for a in stored.artifacts)
    body = json.loads(s3_store.read(report.run_id, "report.json"))
    assert body["run_id"] == report.run_id


def test_a_run_whose_report_artifact_fails_leaves_nothing(engine, s3_store, tmp_path):
    def refuse(request: Any, **_: Any) -> None:
        if request.url.split("?")[0].endswith("/report.json"):
            raise EndpointConnectionError(endpoint_url=request.url)

    s3_store.client.meta.events.register("before-send.s3.PutObject", refuse)
    with pytest.raises(ArtifactStoreUnavailable) as exc:
        canary(engine, s3_store, tmp_path)(RunCanary(samples=EXPLICIT, request_id="r-1"))
    assert exc.value.reason == "ARTIFACT_STORE_UNAVAILABLE"
    assert "no report was stored" in exc.value.message
    assert rows(engine) == [] and objects(s3_store) == []  # the written objects were removed
    # The request id stays free: the same request succeeds once the store is back.
    s3_store.client.meta.events.unregister("before-send.s3.PutObject", refuse)
    again = canary(engine, s3_store, tmp_path)(RunCanary(samples=EXPLICIT, request_id="r-1"))
    assert [r.run_id for r in rows(engine)] == [again.report.run_id]


def test_a_refused_write_is_artifacts_unwritable(engine, s3_server, tmp_path):
    store = S3ArtifactStore(s3_server.client(), "costsim-no-such-bucket", "")
    with pytest.raises(ArtifactsUnwritable):
        canary(engine, store, tmp_path)(RunCanary(samples=EXPLICIT))
    assert rows(engine) == []


def test_an_unreachable_store_fails_the_run_unavailable_with_no_row(engine, tmp_path):
    with pytest.raises(ArtifactStoreUnavailable):
        canary(engine, unreachable_store(), tmp_path)(RunCanary(samples=EXPLICIT))
    assert rows(engine) == []


def test_reconcile_and_retention_on_s3(engine, s3_store, tmp_path):
    uow = SqlAlchemyUnitOfWorkFactory(engine)
    report = canary(engine, s3_store, tmp_path)(RunCanary(samples=EXPLICIT)).report
    # An orphan: the row is lost after its artifacts were written (as when the database fails).
    with uow() as unit:
        unit.reports.delete_runs([report.run_id])
        unit.commit()
    result = ReconcileHandler(uow, s3_store)(Reconcile(), Call())
    assert result.imported == (report.run_id,) and result.corrupt == ()
    assert ReconcileHandler(uow, s3_store)(Reconcile(), Call()).present == 1
    # Retention removes the objects first, then the row.
    later = NOW + timedelta(days=400)
    policy = RetentionPolicy(reports_days=30)
    removed = RetentionHandler(uow, s3_store, clock=lambda: later)(policy, Call())
    assert removed.reports_deleted == (report.run_id,) and removed.artifact_dirs_removed == 1
    assert objects(s3_store) == [] and rows(engine) == []
