"""The cost of authentication: the same server insecure and with TLS + a bearer token.

What is measured: WriteProvenanceBatch (batches of ``--batch-size`` records, the payload as
``payload_json`` with the caller's hashes, as bench/ingest.py's fastest encoding) in rows/s,
and one ``--page-size``-row QueryCanaryReports page (no filters, ``--reports`` reports seeded
as bench/reports.py does) as p50/p95 latency, against two real ``costsim-analytics serve``
subprocesses on the same freshly created database, in the same run:

- **insecure**: no policy, no TLS, no token (the loopback default);
- **secured**: TLS on the gRPC port (a CA and server certificate made here), an HS256 bearer
  token on every call, and a policy file granting the token's subject ``admin`` on ``*``.

The results are ``write_ratio`` (secured rows/s / insecure rows/s; target at least 0.9) and
``query_added_p50_ms`` (secured p50 - insecure p50; target at most 1.0 ms).

How: every request is built and serialised, and every token minted, before any timing. Both
servers are warmed up (connection, TLS handshake, first token verification, database pools),
then the calls alternate between them one by one, the order swapped every pair (AB BA AB ...),
so that drifts in machine load hit both alike; one call is in flight at a time (blocking
client). The same token is sent on every secured call: the server caches verified tokens, so
this is the steady state of a long-lived caller. For the uncached cost, a third variant sends
a freshly minted token on each of ``--fresh`` queries to the secured server (interleaved with
the other two), and the service's own TokenVerifier is timed in this process, cached and not.
Server CPU per call is read from /proc for each server process. Beside the headline numbers,
the spread is printed: the same numbers over five consecutive blocks of calls, and the median
of the per-round differences (the two calls of a round ran back to back) with a 95 %
distribution-free confidence interval, steadier on a loaded machine. The server logs at ERROR in
both variants, so the audit line of each write (one per batch) is not written.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import psycopg
from _common import Server, base_parser, bench_database, libpq_url, percentile, service_server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ingest import make_record, request_bytes
from reports import seed

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.auth.tokens import StaticSecret, TokenVerifier

SERVICE = "/costsim.analytics.v1.AnalyticsService/"
AUDIENCE = "costsim-analytics"
SUBJECT = "bench-caller"
POLICY = f'[[principal]]\nid = "{SUBJECT}"\nroles = ["admin"]\ntenants = ["*"]\n'
WRITE_TARGET, QUERY_TARGET_MS = 0.9, 1.0
BLOCKS = 5  # the timed calls are cut into this many consecutive blocks to show the spread


# --- the secured server's files -----------------------------------------------------------------


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey]
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )


def write_tls_files(folder: Path) -> tuple[bytes, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost (EC P-256): (CA PEM, cert, key)."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = "costsim bench CA"
    ca = (
        _certificate(ca_name, ca_key, (ca_name, ca_key))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        _certificate("localhost", key, (ca_name, ca_key))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM), cert_path, key_path


def secured_env(folder: Path) -> tuple[dict[str, str], bytes, bytes]:
    """The secured server's environment, its CA's PEM and the HS256 secret."""
    ca_pem, cert, key = write_tls_files(folder)
    secret = random.randbytes(48).hex().encode()
    (folder / "jwt.secret").write_bytes(secret + b"\n")
    (folder / "policy.toml").write_text(POLICY)
    env = {
        "COSTSIM_TLS_CERT": str(cert),
        "COSTSIM_TLS_KEY": str(key),
        "COSTSIM_JWT_HS256_SECRET_FILE": str(folder / "jwt.secret"),
        "COSTSIM_POLICY_FILE": str(folder / "policy.toml"),
    }
    return env, ca_pem, secret


def mint(secret: bytes, n: int = 0) -> str:
    """A token for SUBJECT valid for an hour; ``n`` makes it a distinct string (``jti``)."""
    now = int(time.time())
    claims = {"sub": SUBJECT, "aud": AUDIENCE, "iat": now, "exp": now + 3600, "jti": f"b{n}"}
    return jwt.encode(claims, secret, algorithm="HS256")


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Variant:
    """One way of calling: a server and the metadata of each call; keeps its timings."""

    name: str
    server: Server
    metadata: Callable[[], tuple[tuple[str, str], ...]]
    seconds: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0

    def __post_init__(self) -> None:
        self.channel = self.server.channel()
        self._write = self.channel.unary_unary(
            SERVICE + "WriteProvenanceBatch",
            response_deserializer=pb.WriteProvenanceBatchResponse.FromString,
        )
        self._query = self.channel.unary_stream(SERVICE + "QueryCanaryReports")

    def reset(self) -> None:
        """Forget the timings so far (after a warm-up)."""
        self.seconds, self.server_cpu_s = [], 0.0

    def _timed(self, call: Callable[[], None]) -> None:
        cpu = self.server.cpu_s()
        start = time.perf_counter()
        call()
        self.seconds.append(time.perf_counter() - start)
        self.server_cpu_s += self.server.cpu_s() - cpu

    def write(self, body: bytes) -> None:
        """One WriteProvenanceBatch of a serialised request (checks that it was stored)."""

        def call() -> None:
            response = self._write(body, metadata=self.metadata(), timeout=60)
            if response.replayed or not response.ids:
                raise RuntimeError(f"{self.name}: unexpected answer: {response}")

        self._timed(call)

    def query(self, body: bytes, expect: int) -> None:
        """One QueryCanaryReports page, read as raw bytes (the client parses nothing)."""

        def call() -> None:
            messages = list(self._query(body, metadata=self.metadata(), timeout=60))
            if len(messages) != expect:
                raise RuntimeError(f"{self.name}: {len(messages)} messages, expected {expect}")

        self._timed(call)


def interleaved(
    rounds: int, variants: Sequence[Variant], step: Callable[[Variant, int], None]
) -> None:
    """Call ``step(variant, i)`` for each round i, the variants' order rotated every round."""
    for i in range(rounds):
        k = i % len(variants)
        for variant in (*variants[k:], *variants[:k]):
            step(variant, i)


def blocks(values: Sequence[float]) -> list[Sequence[float]]:
    """``values`` cut into BLOCKS consecutive blocks (fewer when there are fewer values)."""
    size = max(1, len(values) // BLOCKS)
    return [values[i : i + size] for i in range(0, size * min(BLOCKS, len(values)), size)]


def median_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """The median and its distribution-free 95 % confidence interval (sign-test ranks)."""
    ordered, n = sorted(values), len(values)
    k = max(0, int((n - 1.96 * n**0.5) / 2))
    return statistics.median(ordered), ordered[k], ordered[n - 1 - k]


def verify_cost_us(secret_file: Path, secret: bytes, n: int) -> tuple[float, float]:
    """The service's TokenVerifier in this process: µs per verify, (cached, uncached)."""
    verifier = TokenVerifier(StaticSecret.from_file(secret_file), audience=AUDIENCE)
    fresh = [mint(secret, 1_000_000 + i) for i in range(n)]
    start = time.perf_counter()
    for token in fresh:
        verifier.verify(token)
    uncached = (time.perf_counter() - start) / n
    token = fresh[0]
    start = time.perf_counter()
    for _ in range(n * 10):
        verifier.verify(token)
    cached = (time.perf_counter() - start) / (n * 10)
    return cached * 1e6, uncached * 1e6


def checkpoint(url: str) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=80, help="timed write batches per variant")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=3, help="untimed write batches per variant")
    parser.add_argument("--queries", type=int, default=1000, help="timed query pages per variant")
    parser.add_argument("--query-warmup", type=int, default=30, help="untimed pages per variant")
    parser.add_argument("--fresh", type=int, default=200, help="queries with a fresh token each")
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--reports", type=int, default=5000, help="canary reports seeded")
    args = parser.parse_args()
    if min(args.batches, args.queries, args.fresh) < 1 or args.fresh > args.queries:
        parser.error("--batches, --queries and --fresh must be positive, --fresh <= --queries")
    size, per_variant = args.batch_size, args.warmup + args.batches

    rng = random.Random(42)
    records = [make_record(rng, n) for n in range(2 * per_variant * size)]
    requests = [
        request_bytes(records[i : i + size], "", "json+hashes")
        for i in range(0, len(records), size)
    ]
    del records
    query_body = pb.QueryCanaryReportsRequest(page_size=args.page_size).SerializeToString()

    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_database(args.database_url, "costsim_bench_auth") as url,
    ):
        folder = Path(tmp)
        env, ca_pem, secret = secured_env(folder)
        token = mint(secret)
        fresh_tokens = iter([mint(secret, n) for n in range(1, args.fresh + 1)])
        start = time.perf_counter()
        seed(url, args.reports)
        print(
            f"seeded {args.reports} reports in {time.perf_counter() - start:.1f} s;"
            f" {len(requests)} write requests of {size} records built"
        )
        with service_server(url) as plain, service_server(url, env=env, tls_ca=ca_pem) as tls:
            insecure = Variant("insecure", plain, lambda: ())
            secured = Variant("secured", tls, lambda: (("authorization", f"Bearer {token}"),))
            fresh = Variant(
                "secured, fresh token",
                tls,
                lambda: (("authorization", f"Bearer {next(fresh_tokens)}"),),
            )
            pair = (insecure, secured)

            # Writes: each variant its own requests (distinct records), one batch at a time.
            own = {insecure.name: iter(requests[::2]), secured.name: iter(requests[1::2])}
            interleaved(args.warmup, pair, lambda v, _: v.write(next(own[v.name])))
            for v in pair:
                v.reset()
            interleaved(args.batches, pair, lambda v, _: v.write(next(own[v.name])))
            writes = {v.name: (list(v.seconds), v.server_cpu_s) for v in pair}
            checkpoint(url)

            # Queries: the same page from each; the fresh-token variant joins for a sample.
            for v in pair:
                v.reset()
            interleaved(args.query_warmup, pair, lambda v, _: v.query(query_body, args.page_size))
            for v in pair:
                v.reset()
            interleaved(
                args.fresh, (*pair, fresh), lambda v, _: v.query(query_body, args.page_size)
            )
            interleaved(
                args.queries - args.fresh, pair, lambda v, _: v.query(query_body, args.page_size)
            )
            queries = {v.name: (list(v.seconds), v.server_cpu_s) for v in (*pair, fresh)}
            for v in (*pair, fresh):
                v.channel.close()
        cached_us, uncached_us = verify_cost_us(folder / "jwt.secret", secret, 2000)

    report(args, writes, queries, cached_us, uncached_us)


def report(
    args: argparse.Namespace,
    writes: dict[str, tuple[list[float], float]],
    queries: dict[str, tuple[list[float], float]],
    cached_us: float,
    uncached_us: float,
) -> None:
    """Print the table, the verdicts and the JSON line (last)."""
    size, page = args.batch_size, args.page_size
    rows_s = {n: size * len(s) / sum(s) for n, (s, _) in writes.items()}
    write_cpu = {n: cpu * 1000 / len(s) for n, (s, cpu) in writes.items()}
    write_p50 = {n: percentile(s, 50) * 1000 for n, (s, _) in writes.items()}
    q = {
        n: (percentile(s, 50) * 1000, percentile(s, 95) * 1000, cpu * 1e6 / len(s), len(s))
        for n, (s, cpu) in queries.items()
    }
    write_ratio = rows_s["secured"] / rows_s["insecure"]
    # The spread: the same numbers over consecutive blocks of the (paired) calls. A block's
    # rows/s ratio is the insecure seconds over the secured seconds of the same batches.
    write_blocks = [
        sum(a) / sum(b)
        for a, b in zip(blocks(writes["insecure"][0]), blocks(writes["secured"][0]), strict=True)
    ]
    added_p50 = q["secured"][0] - q["insecure"][0]
    added_blocks = [
        (statistics.median(b) - statistics.median(a)) * 1000
        for a, b in zip(blocks(queries["insecure"][0]), blocks(queries["secured"][0]), strict=True)
    ]
    # Paired per round (the two calls of a round ran back to back): steadier than the above.
    ins_w, sec_w = writes["insecure"][0], writes["secured"][0]
    paired_ratio = median_ci([a / b for a, b in zip(ins_w, sec_w, strict=True)])
    ins_q, sec_q = queries["insecure"][0], queries["secured"][0]
    paired_added = median_ci([(b - a) * 1000 for a, b in zip(ins_q, sec_q, strict=True)])
    # Against the cached-token calls of the same rounds (the fresh ones ran only in the first).
    fresh_s = queries["secured, fresh token"][0]
    fresh_added = percentile(fresh_s, 50) - percentile(queries["secured"][0][: len(fresh_s)], 50)
    fresh_added *= 1000

    print(f"\nWriteProvenanceBatch, {size} records per batch, 1 in flight")
    print(f"{'variant':<24}{'rows/s':>10}{'p50 ms':>9}{'server CPU ms/batch':>21}{'batches':>9}")
    for n in ("insecure", "secured"):
        count = len(writes[n][0])
        print(f"{n:<24}{rows_s[n]:>10,.0f}{write_p50[n]:>9.1f}{write_cpu[n]:>21.1f}{count:>9}")
    print(f"\nQueryCanaryReports, one {page}-row page, 1 in flight")
    print(f"{'variant':<24}{'p50 ms':>10}{'p95 ms':>9}{'server CPU µs/call':>21}{'calls':>9}")
    for n, (p50, p95, cpu, count) in q.items():
        print(f"{n:<24}{p50:>10.2f}{p95:>9.2f}{cpu:>21.0f}{count:>9}")
    print(
        f"\ntoken verification in-process (TokenVerifier, HS256):"
        f" cached {cached_us:.1f} µs, uncached {uncached_us:.1f} µs"
    )
    print(f"uncached token, added p50 on the query page: {fresh_added:+.2f} ms (small sample)")
    print(
        "paired per round (median, 95 % CI): write ratio {:.3f} ({:.3f}..{:.3f}),"
        " query added {:+.2f} ms ({:+.2f}..{:+.2f})".format(*paired_ratio, *paired_added)
    )
    spread = ", ".join(f"{r:.3f}" for r in write_blocks)
    met_w, met_q = write_ratio >= WRITE_TARGET, added_p50 <= QUERY_TARGET_MS
    print(
        f"\nwrite_ratio {write_ratio:.3f} (target >= {WRITE_TARGET}): "
        f"{'MET' if met_w else 'NOT MET'}   [per block: {spread}]"
    )
    spread = ", ".join(f"{a:+.2f}" for a in added_blocks)
    print(
        f"query_added_p50_ms {added_p50:+.2f} (target <= {QUERY_TARGET_MS}): "
        f"{'MET' if met_q else 'NOT MET'}   [per block: {spread}]"
    )
    result = {
        "bench": "auth",
        "write_ratio": round(write_ratio, 3),
        "write_target": WRITE_TARGET,
        "write_met": met_w,
        "query_added_p50_ms": round(added_p50, 3),
        "query_target_ms": QUERY_TARGET_MS,
        "query_met": met_q,
        "write_rows_s": {n: round(r) for n, r in rows_s.items()},
        "write_p50_ms": {n: round(v, 2) for n, v in write_p50.items()},
        "write_server_cpu_ms_per_batch": {n: round(v, 2) for n, v in write_cpu.items()},
        "write_ratio_blocks": [round(r, 3) for r in write_blocks],
        "query_p50_ms": {n: round(v[0], 3) for n, v in q.items()},
        "query_p95_ms": {n: round(v[1], 3) for n, v in q.items()},
        "query_server_cpu_us_per_call": {n: round(v[2]) for n, v in q.items()},
        "query_added_p50_ms_blocks": [round(a, 3) for a in added_blocks],
        "write_ratio_paired_median_ci": [round(v, 3) for v in paired_ratio],
        "query_added_ms_paired_median_ci": [round(v, 3) for v in paired_added],
        "uncached_token_added_p50_ms": round(fresh_added, 3),
        "verify_us": {"cached": round(cached_us, 2), "uncached": round(uncached_us, 2)},
        "batch_size": size,
        "batches": len(writes["insecure"][0]),
        "page_size": page,
        "queries": len(queries["insecure"][0]),
        "fresh_queries": len(queries["secured, fresh token"][0]),
        "reports": args.reports,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
