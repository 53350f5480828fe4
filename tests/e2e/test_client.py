"""The client library against the real server: writers through faults, streams, security.

Every writer test counts the database itself at the end: each record ``add()`` returned for is
stored exactly once (by run id), whatever happened on the way: the server killed and restarted,
the database cut, admission control refusing calls, a token not yet valid.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from sqlalchemy import text

from costsim_analytics.client import (
    AnalyticsClient,
    AsyncAnalyticsClient,
    AsyncProvenanceWriter,
    InvalidRecordError,
    NotFoundError,
    PermissionDeniedError,
    ProvenanceWriter,
    RetryPolicy,
    WriterHooks,
)
from costsim_analytics.drivers.database import make_engine
from costsim_analytics.testing.tcp_proxy import TcpProxy
from tests.e2e.server import ServerProcess
from tests.e2e.test_auth import write_secured_files
from tests.factories import provenance_json
from tests.security import (
    HS_SECRET,
    CertificateAuthority,
    claims,
    sign,
    tamper,
    write_atomically,
)

SERVING = health_pb2.HealthCheckResponse.SERVING


def patient() -> RetryPolicy:
    """Patient enough for a server restart on a busy machine; a budget of its own per client
    (a shared one would carry the failures of one test into the next)."""
    return RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, max_attempts=60)


def stored(database_url: str, tag: str) -> Counter[str]:
    """Rows in the database per run id, for the records of one test."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT run_id FROM costsim_provenance WHERE run_id LIKE :p"),
                {"p": f"{tag}-%"},
            ).all()
    finally:
        engine.dispose()
    return Counter(run_id for (run_id,) in rows)


def assert_exactly_once(database_url: str, tag: str, added: list[str]) -> None:
    counts = stored(database_url, tag)
    duplicated = sorted(r for r, n in counts.items() if n > 1)
    lost = sorted(set(added) - set(counts))
    assert not duplicated, f"{len(duplicated)} stored twice: {duplicated[:5]}"
    assert not lost, f"{len(lost)} added but not stored: {lost[:5]}"
    assert set(counts) == set(added), "rows nobody added"


class Adder:
    """A thread adding records to a writer until stopped; the run ids add() returned for."""

    def __init__(self, writer: ProvenanceWriter, tag: str) -> None:
        self.writer, self.tag = writer, tag
        self.added: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            run_id = f"{self.tag}-{n}"
            self.writer.add(**provenance_json(n, run_id=run_id, tenant_id=self.tag[:20]))
            self.added.append(run_id)
            n += 1
            if n % 20 == 0:
                time.sleep(0.005)

    def __enter__(self) -> Adder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_sent(self, more: int, timeout_s: float = 30) -> None:
        target = self.writer.metrics().records_sent + more
        deadline = time.monotonic() + timeout_s
        while self.writer.metrics().records_sent < target:
            assert time.monotonic() < deadline, self.writer.metrics()
            time.sleep(0.02)


@pytest.fixture
def tag() -> str:
    return f"client-{uuid.uuid4().hex[:8]}"


def test_the_writer_survives_a_sigkill_and_restart_exactly_once(database_url, tmp_path, tag):
    server = ServerProcess(database_url, tmp_path / "server.log").start()
    try:
        server.wait_health(SERVING)
        address = server.address
        with (
            AnalyticsClient(address, retry=patient()) as client,
            ProvenanceWriter(client, spool=tmp_path / "spool", max_batch_records=50) as writer,
        ):
            with Adder(writer, tag) as adder:
                adder.wait_sent(60)
                assert server.stop(signal.SIGKILL) == -signal.SIGKILL
                time.sleep(0.3)  # the writer keeps adding, and its batches fail meanwhile
                server.start(listen=address)
                adder.wait_sent(60)
            writer.flush(timeout_s=60)
            metrics = writer.metrics()
        assert metrics.retries > 0 and metrics.queue_depth == 0
        assert_exactly_once(database_url, tag, adder.added)
        assert "internal error" not in server.log()
    finally:
        server.stop()


@pytest.fixture
def proxied(postgres_migrated_url: str) -> Iterator[tuple[TcpProxy, str]]:
    from sqlalchemy.engine import make_url

    real = make_url(postgres_migrated_url)
    proxy = TcpProxy((real.host or "127.0.0.1", real.port or 5432))
    try:
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        yield proxy, url
    finally:
        proxy.close()


def test_the_writer_survives_a_database_cut_exactly_once(
    proxied, postgres_migrated_url, tmp_path, tag
):
    proxy, url = proxied
    server = ServerProcess(url, tmp_path / "server.log").start()
    try:
        server.wait_health(SERVING)
        with (
            AnalyticsClient(server.address, retry=patient()) as client,
            ProvenanceWriter(client, spool=tmp_path / "spool", max_batch_records=50) as writer,
        ):
            with Adder(writer, tag) as adder:
                adder.wait_sent(60)
                proxy.down()
                time.sleep(3)
                proxy.up()
                adder.wait_sent(60)
            writer.flush(timeout_s=60)
        # Calls were refused meanwhile (retried by gRPC's policy or by the writer) ...
        assert "DATABASE_UNAVAILABLE" in server.log()
        # ... and every record is there once.
        assert_exactly_once(postgres_migrated_url, tag, adder.added)
    finally:
        server.stop()


def test_the_writer_waits_out_admission_refusals_exactly_once(database_url, tmp_path, tag):
    server = ServerProcess(
        database_url,
        tmp_path / "server.log",
        COSTSIM_MAX_UNARY_CALLS="1",
        COSTSIM_MAX_UNARY_CALLS_PER_PRINCIPAL="1",
        COSTSIM_ADMISSION_RETRY_AFTER_S="0.05",
    ).start()
    try:
        server.wait_health(SERVING)
        with (
            AnalyticsClient(server.address) as client,
            ProvenanceWriter(
                client, max_batch_records=20, max_in_flight=4, retry=patient()
            ) as writer,
        ):
            added = [f"{tag}-{n}" for n in range(200)]
            # All at once: ten batches due together, four in flight on one connection.
            writer.add_many(provenance_json(n, run_id=r) for n, r in enumerate(added))
            writer.flush(timeout_s=60)
            metrics = writer.metrics()
        assert metrics.errors.get("RESOURCE_EXHAUSTED", 0) > 0, metrics
        assert metrics.records_sent == 200 and metrics.records_rejected == 0
        assert_exactly_once(database_url, tag, added)
    finally:
        server.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_streams_page_through_everything_and_resume_after_a_restart(database_url, tmp_path, tag):
    # The server lowers every page to 300: the client still reads to the end.
    server = ServerProcess(database_url, tmp_path / "server.log", COSTSIM_MAX_PAGE_SIZE="300")
    server.start()
    try:
        server.wait_health(SERVING)
        address = server.address
        with AnalyticsClient(address, retry=patient()) as client:
            for start in range(0, 1000, 200):
                client.write_provenance_batch(
                    [provenance_json(i, run_id=f"{tag}-{i}") for i in range(start, start + 200)]
                )
            everything = [r.id for r in client.query_provenance(page_size=1000)]
            assert len(everything) == len(set(everything)) == 1000
            assert everything == sorted(everything, reverse=True)  # newest first, in order
            limited = client.query_provenance(limit=450)
            assert [r.id for r in limited] == everything[:450]
            # Resuming from the last token continues exactly there.
            rest = [r.id for r in client.query_provenance(page_token=limited.page_token)]
            assert rest == everything[450:]

            received = []
            stream = client.query_provenance(page_size=100)
            for record in stream:
                received.append(record.id)
                if len(received) == 150:  # mid-page: the server goes away and comes back
                    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
                    server.start(listen=address)
            assert received == everything
            assert list(client.query_canary_reports()) == []

        async def read_async() -> list[int]:  # the asyncio client resumes the same way
            async with AsyncAnalyticsClient(address, retry=patient()) as aclient:
                got = []
                async for record in aclient.query_provenance(page_size=100):
                    got.append(record.id)
                    if len(got) == 250:
                        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
                        server.start(listen=address)
                return got

        assert asyncio.run(read_async()) == everything
    finally:
        server.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_asyncio_client_and_writer_through_a_restart(database_url, tmp_path, tag):
    server = ServerProcess(database_url, tmp_path / "server.log").start()
    try:
        server.wait_health(SERVING)

        address = server.address

        async def main() -> tuple[list[str], list[str], int]:
            async with AsyncAnalyticsClient(address, retry=patient()) as client:
                added = []
                async with AsyncProvenanceWriter(
                    client, spool=tmp_path / "spool", max_batch_records=40, retry=patient()
                ) as writer:
                    for n in range(250):
                        run_id = f"{tag}-{n}"
                        await writer.add(**provenance_json(n, run_id=run_id))
                        added.append(run_id)
                        if n == 120:  # the server goes away under the writer and comes back
                            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
                            await asyncio.sleep(2.0)  # longer than gRPC's own retries last
                            server.start(listen=address)
                    with pytest.raises(InvalidRecordError):
                        await writer.add(**provenance_json(0, run_id=""))
                    await writer.flush(timeout_s=30)
                    batches = writer.metrics().batches_sent
                    assert writer.metrics().errors, "the restart cost the writer no attempt"
                read = [r.run_id async for r in client.query_provenance(run_id=f"{tag}-7")]
                with pytest.raises(NotFoundError):
                    await client.get_canary_report("no-such-run")
                return added, read, batches

        added, read, batches = asyncio.run(main())
        assert read == [f"{tag}-7"] and batches >= 7
        assert_exactly_once(database_url, tag, added)
    finally:
        server.stop()


class Recorder(WriterHooks):
    def __init__(self) -> None:
        self.refused: list[str] = []
        self.acked = 0

    def batch_acked(self, batch, replayed) -> None:
        self.acked += batch.records

    def rejected(self, rejected) -> None:
        self.refused.append(rejected.record.run_id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_mtls_writer_keeps_to_its_tenant_and_sets_refused_records_aside(
    database_url, tmp_path, tag
):
    ca = CertificateAuthority()
    env = write_secured_files(tmp_path, ca, mtls=True)
    cert, key = ca.issue_client("spiffe://test/ns/sim/writer").write(tmp_path, "writer")
    health = ca.issue_client("spiffe://test/ns/sim/health")
    server = ServerProcess(database_url, tmp_path / "server.log", COSTSIM_HTTP_LISTEN="off", **env)
    server.credentials = grpc.ssl_channel_credentials(ca.pem, health.key_pem, health.cert_pem)
    server.start()
    try:
        server.wait_health(SERVING)
        hooks = Recorder()
        with (
            AnalyticsClient(
                server.address,
                ca_file=tmp_path / "ca.crt",
                cert_file=cert,
                key_file=key,
                server_name="localhost",
            ) as client,
            ProvenanceWriter(client, spool=tmp_path / "spool", hooks=hooks) as writer,
        ):
            for n in range(20):
                tenant = "globex" if n == 7 else "acme"
                writer.add(**provenance_json(n, run_id=f"{tag}-{n}", tenant_id=tenant))
            writer.flush(timeout_s=30)
            assert writer.metrics().records_rejected == 1
            read = {r.run_id for r in client.query_provenance(tenant_id="acme")}
            with pytest.raises(PermissionDeniedError) as denied:
                list(client.query_provenance(tenant_id="globex"))
        assert denied.value.reason == "TENANT_NOT_ALLOWED"
        assert hooks.refused == [f"{tag}-7"] and hooks.acked == 19
        assert read == {f"{tag}-{n}" for n in range(20) if n != 7}
        rejected = (tmp_path / "spool" / "rejected.jsonl").read_text()
        assert f'"run_id": "{tag}-7"' in rejected and "TENANT_NOT_ALLOWED" in rejected
        assert_exactly_once(database_url, tag, [f"{tag}-{n}" for n in range(20) if n != 7])
    finally:
        server.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_token_file_is_read_again_when_it_changes(database_url, tmp_path, tag):
    ca = CertificateAuthority()
    env = write_secured_files(tmp_path, ca, mtls=False)
    ca.write(tmp_path)
    server = ServerProcess(database_url, tmp_path / "server.log", COSTSIM_HTTP_LISTEN="off", **env)
    server.credentials = grpc.ssl_channel_credentials(root_certificates=ca.pem)
    server.start()
    try:
        server.wait_health(SERVING)
        valid = sign(claims("spiffe://test/ns/sim/backfill"), HS_SECRET, "HS256")
        token_file = write_atomically(tmp_path / "token", tamper(valid).encode())
        with (
            AnalyticsClient(
                server.address, ca_file=tmp_path / "ca.crt", token_file=token_file
            ) as client,
            ProvenanceWriter(client, spool=tmp_path / "spool", retry=patient()) as writer,
        ):
            added = [f"{tag}-{n}" for n in range(30)]
            for n, run_id in enumerate(added):
                writer.add(**provenance_json(n, run_id=run_id, tenant_id="acme"))
            deadline = time.monotonic() + 20
            while writer.metrics().errors.get("UNAUTHENTICATED", 0) == 0:
                assert time.monotonic() < deadline, writer.metrics()
                time.sleep(0.05)
            assert writer.metrics().records_sent == 0  # refused, kept, retried
            write_atomically(token_file, valid.encode())  # the rotation
            writer.flush(timeout_s=30)
        assert_exactly_once(database_url, tag, added)
    finally:
        server.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_cli_finishes_an_interrupted_write_from_its_spool(database_url, tmp_path, tag):
    from tests.e2e.server import CLI

    source = tmp_path / "records.jsonl"
    added = [f"{tag}-{n}" for n in range(25)]
    source.write_text(
        "\n".join(json.dumps(provenance_json(n, run_id=r)) for n, r in enumerate(added)) + "\n"
    )
    spool = tmp_path / "spool"
    with socket.socket() as unused:  # a port nobody listens on: the server is away
        unused.bind(("127.0.0.1", 0))
        away = f"127.0.0.1:{unused.getsockname()[1]}"
    base = [CLI, "provenance", "write", "--spool", str(spool), "--json"]
    run = lambda *a: subprocess.run([*base, *a], capture_output=True, text=True, timeout=60)  # noqa: E731
    first = run(str(source), "--target", away, "--timeout", "0.5")
    assert first.returncode == 1, first.stderr
    assert json.loads(first.stdout)["left_in_spool"] == 25
    server = ServerProcess(database_url, tmp_path / "server.log").start()
    try:
        server.wait_health(SERVING)
        # The same command again: what the spool holds goes, the file is not added twice.
        second = run(str(source), "--target", server.address)
        assert second.returncode == 0, second.stderr
        summary = json.loads(second.stdout)
        assert (summary["from_spool"], summary["already_added"]) == (25, 25)
        assert (summary["records"], summary["left_in_spool"]) == (25, 0)
        third = run(str(source), "--target", server.address)
        assert third.returncode == 0 and json.loads(third.stdout)["records"] == 0, third.stderr
        assert_exactly_once(database_url, tag, added)

        # Without a spool, --request-id P sends batch n as P-n: a re-run replays them all.
        more = tmp_path / "more.jsonl"
        again = [f"{tag}-more-{n}" for n in range(7)]
        more.write_text(
            "".join(json.dumps(provenance_json(n, run_id=r)) + "\n" for n, r in enumerate(again))
        )
        plain = [CLI, "provenance", "write", str(more), "--target", server.address, "--json"]
        keyed = [*plain, "--request-id", f"{tag}-load", "--batch-size", "3"]
        first_run = subprocess.run(keyed, capture_output=True, text=True, timeout=60)
        rerun = subprocess.run(keyed, capture_output=True, text=True, timeout=60)
        assert first_run.returncode == 0 and rerun.returncode == 0, rerun.stderr
        assert json.loads(first_run.stdout)["replayed_batches"] == 0
        assert json.loads(rerun.stdout)["replayed_batches"] == 3
        assert_exactly_once(database_url, tag, added + again)
    finally:
        server.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_rotated_client_certificate_is_used_without_a_restart(database_url, tmp_path, tag):
    ca = CertificateAuthority()
    env = write_secured_files(tmp_path, ca, mtls=True)
    health = ca.issue_client("spiffe://test/ns/sim/health")
    server = ServerProcess(database_url, tmp_path / "server.log", COSTSIM_HTTP_LISTEN="off", **env)
    server.credentials = grpc.ssl_channel_credentials(ca.pem, health.key_pem, health.cert_pem)
    server.start()
    try:
        server.wait_health(SERVING)
        # First a certificate the server does not trust (another CA): every handshake fails.
        cert, key = CertificateAuthority("elsewhere").issue_client().write(tmp_path, "client")
        added = [f"{tag}-{n}" for n in range(10)]
        with (
            AnalyticsClient(
                server.address, ca_file=tmp_path / "ca.crt", cert_file=cert, key_file=key
            ) as client,
            ProvenanceWriter(client, spool=tmp_path / "spool", retry=patient()) as writer,
        ):
            for n, run_id in enumerate(added):
                writer.add(**provenance_json(n, run_id=run_id, tenant_id="acme"))
            deadline = time.monotonic() + 20
            while not writer.metrics().errors:
                assert time.monotonic() < deadline, writer.metrics()
                time.sleep(0.05)
            assert writer.metrics().records_sent == 0
            ca.issue_client("spiffe://test/ns/sim/writer").write(tmp_path, "client")  # rotated
            writer.flush(timeout_s=30)
        assert_exactly_once(database_url, tag, added)
    finally:
        server.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_other_rpc_through_the_client(database_url, tmp_path):
    from costsim_analytics.engines.canary.synthetic import synthetic_samples

    server = ServerProcess(
        database_url, tmp_path / "server.log", COSTSIM_ARTIFACTS_DIR=str(tmp_path / "artifacts")
    ).start()
    try:
        server.wait_health(SERVING)
        samples = [{"id": i, "plan_input": plan} for i, plan in synthetic_samples()[:60]]
        with AnalyticsClient(server.address) as client:
            ran = client.run_canary({"min_samples": 10, "seed": 11, "samples": samples})
            report = ran.report
            assert report.total_samples == 60 and not ran.replayed
            assert client.get_canary_report(report.run_id).run_id == report.run_id
            reports = list(client.query_canary_reports(passed=report.passed))
            assert [r.run_id for r in reports] == [report.run_id]
            explained = client.explain_canary_run(report.run_id, group_by="skill", top=3)
            assert explained.summary.run_id == report.run_id and len(explained.samples) <= 3

            promoted = client.promote_canary_run(report.run_id, "nightly")
            assert (promoted.name, promoted.version, promoted.active) == ("nightly", 1, True)
            golden = client.get_golden_dataset("nightly")
            assert golden.sample_count == len(golden.samples) > 0
            copy = []
            for sample in golden.samples:  # messages go in as they are
                shifted = type(sample)()
                shifted.CopyFrom(sample)
                shifted.expected_cost_cents += 1
                copy.append(shifted)
            second = client.create_golden_dataset("nightly", copy, description="shifted")
            assert (second.version, second.active) == (2, False)
            versions = sorted(d.version for d in client.list_golden_datasets("nightly"))
            assert versions == [1, 2]
            assert client.activate_golden_dataset("nightly", 2).active
            comparison = client.compare_golden(name="nightly", version=2, tolerance=0.5)
            assert (comparison.dataset_name, comparison.dataset_version) == ("nightly", 2)
            assert comparison.candidate.samples == len(copy)
            with pytest.raises(NotFoundError):
                client.explain_canary_run("no-such-run")
    finally:
        server.stop()
