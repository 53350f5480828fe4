"""The whole contract under generated input: no call is INTERNAL, UNKNOWN or hangs.

Hypothesis generates requests for every AnalyticsService RPC from the message descriptors
(``fuzz_requests.py``: any field with any value, and plausible requests with a few fields
spoilt), sends them to one real server per database (some as raw, mostly undecodable bytes),
and checks after every call:

1. the status is not INTERNAL, UNKNOWN or DEADLINE_EXCEEDED (a hang), and every non-OK
   status carries the service's ErrorInfo; INVALID_ARGUMENT carries at least one BadRequest
   field violation, and each names a field of the request (or ``request`` itself);
2. every answer decodes as the RPC's response type;
3. a refused write (WriteProvenanceBatch, RunCanary, CreateGoldenDataset, PromoteCanaryRun,
   ActivateGoldenDataset) changed no row of any table (contents, not only counts);
4. an accepted write never breaks a read: what it wrote reads back at once (streams, drift
   statistics, the report, the dataset and a comparison against it), and after the last
   example every query, list and get over everything succeeds;
5. an accepted write with a ``request_id``, sent again as the same bytes, replays the same
   answer and writes nothing.

Besides, an accepted write that inserts must show in the digest (so property 3 can fail),
and the dashboard's pages of everything stored render.

``COSTSIM_FUZZ_EXAMPLES`` sets the examples per database (default 800: about 20 s each
here); ``COSTSIM_FUZZ_EXAMPLES=5000`` is the long run. Under ``CI=true`` the examples are
derandomized, so a CI failure reproduces; elsewhere each run explores new ones and a failing
example is replayed first next time.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from costsim.analytics.v1 import analytics_pb2 as pb
from costsim_analytics.api.dashboard.app import MAX_LIMIT
from costsim_analytics.drivers.models import Base
from tests.e2e.fuzz_requests import (
    METHODS,
    STREAMING,
    WRITES,
    Pool,
    mutated_bytes,
    request,
    request_class,
    response_class,
)
from tests.e2e.fuzz_values import once_in
from tests.e2e.server import SERVICE, ServerProcess

EXAMPLES = int(os.environ.get("COSTSIM_FUZZ_EXAMPLES", "800"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
SLOW = {"RunCanary", "CompareGolden", "PromoteCanaryRun"}
DOMAIN = "costsim.analytics.v1"

DEFAULT_DATABASE = settings().database
# A hang fails sooner: every call has a deadline of its own (15 s, 60 s for the slow RPCs).
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 5)


@dataclass
class Outcome:
    code: grpc.StatusCode
    answers: list[bytes]
    error: grpc.RpcError | None = None


def shown(msg: object) -> str:
    """The request in text format, cut short (text_format refuses messages nested too deep)."""
    try:
        text = text_format.MessageToString(msg, as_one_line=True)  # type: ignore[arg-type]
    except Exception as exc:  # the note is best effort; the bytes are noted too
        return f"<not printable: {exc!r:.200}>"
    return repr(text[:2000])


def digest(engine: Engine) -> dict[str, tuple[int, str]]:
    """Each table's row count and a digest of its rows, read past the service."""
    out = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = sorted(repr(tuple(row)) for row in conn.execute(select(table)))
            out[table.name] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
    return out


JSON_TYPES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?")


def names_a_field(descriptor: Descriptor, path: str) -> bool:
    """Whether a violation's path names a field of the request (``records[3].payload.x``).

    ``request`` is the request itself; past a JSON field (a ``Struct``) the path goes on by
    JSON keys, which any text may be.
    """
    if path == "request":
        return True
    current: Descriptor | None = descriptor
    for part in path.split("."):
        match = _SEGMENT.fullmatch(part)
        if current is None or match is None:
            return False
        fd = current.fields_by_name.get(match.group(1))
        if fd is None or (match.group(2) is not None and not fd.is_repeated):
            return False
        current = fd.message_type
        if current is not None and current.full_name in JSON_TYPES:
            return True
    return True


def inserts(method: str, answer: Any) -> bool:
    """Whether an accepted write's answer says it stored something new (not a replay)."""
    if method == "ActivateGoldenDataset" or answer.replayed:
        return False  # activating the active version changes nothing
    return method != "RunCanary" or answer.report.status != pb.CANARY_STATUS_SKIPPED


class Contract:
    """One server, the pool of ids it handed out, and the properties of every call."""

    def __init__(self, server: ServerProcess, channel: grpc.Channel, engine: Engine) -> None:
        self.server = server
        self.channel = channel
        self.engine = engine
        self.pool = Pool()
        self.codes: dict[str, Counter[str]] = defaultdict(Counter)

    # --- calls ---------------------------------------------------------------------------

    def call(self, method: str, data: bytes) -> Outcome:
        path = f"/{SERVICE}/{method}"
        timeout = 60 if method in SLOW else 15
        try:
            if method in STREAMING:
                stream = self.channel.unary_stream(path, None, None)
                answers = list(stream(data, timeout=timeout))
            else:
                answers = [self.channel.unary_unary(path, None, None)(data, timeout=timeout)]
        except grpc.RpcError as exc:
            return Outcome(exc.code(), [], exc)
        return Outcome(grpc.StatusCode.OK, answers)

    def checked(self, method: str, msg: object) -> list[object]:
        """Call with a message; it must succeed (a read after accepted writes)."""
        data = msg.SerializeToString()  # type: ignore[attr-defined]
        outcome = self.call(method, data)
        self.check(method, outcome)
        assert outcome.code == grpc.StatusCode.OK, (method, msg, outcome.error)
        return [response_class(method).FromString(a) for a in outcome.answers]

    def check(self, method: str, outcome: Outcome) -> None:
        """Properties 1 and 2 of the module docstring."""
        assert outcome.code not in NEVER, f"{method} -> {outcome.code}: {self.server_error()}"
        for answer in outcome.answers:
            response_class(method).FromString(answer)
        if outcome.error is None:
            self.codes[method]["OK"] += 1
            return
        status = rpc_status.from_call(outcome.error)  # type: ignore[arg-type]
        assert status is not None, f"{method} -> {outcome.code} without google.rpc.Status"
        infos: list[error_details_pb2.ErrorInfo] = []
        fields: list[str] = []
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                infos.append(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.extend(v.field for v in bad.field_violations)
        assert [i.domain for i in infos] == [DOMAIN], f"{method}: ErrorInfo {infos}"
        if outcome.code == grpc.StatusCode.INVALID_ARGUMENT:
            assert fields, f"{method} INVALID_ARGUMENT ({infos[0].reason}) names no field"
            unknown = [f for f in fields if not names_a_field(METHODS[method].input_type, f)]
            assert not unknown, f"{method} {infos[0].reason}: no such request field {unknown}"
        self.codes[method][f"{outcome.code.name}/{infos[0].reason}"] += 1

    def server_error(self) -> str:
        """The last traceback in the server's log, for a failure message."""
        log = self.server.log()
        start = log.rfind("failed: internal error")
        return log[log.rfind("\n", 0, start) + 1 :][-6000:] if start >= 0 else log[-2000:]

    # --- one example ---------------------------------------------------------------------

    def example(self, data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(sorted(METHODS)), label="method")
        msg = request(data.draw, method, self.pool)
        raw = msg.SerializeToString()
        if data.draw(once_in(8), label="as bytes"):
            raw = mutated_bytes(data.draw, raw)
        note(f"{method}: {shown(msg)}")
        note(f"bytes: {raw[:400].hex()}")
        before = digest(self.engine) if method in WRITES else None
        started = time.time()
        outcome = self.call(method, raw)
        self.check(method, outcome)
        if outcome.code != grpc.StatusCode.OK:
            if before is not None:
                assert digest(self.engine) == before, f"refused {method} changed rows"
            return
        answers = [response_class(method).FromString(a) for a in outcome.answers]
        self.harvest(method, raw, answers)
        if method in WRITES:
            if inserts(method, answers[0]):  # and the digest sees a write when there is one
                assert digest(self.engine) != before, f"accepted {method} changed no row"
            self.read_back(method, answers[0], started)
            if getattr(request_class(method).FromString(raw), "request_id", ""):
                self.retry(method, raw, answers[0])

    def retry(self, method: str, raw: bytes, answer: Any) -> None:
        """Property 5: the same bytes again replay the first answer and write nothing."""
        before = digest(self.engine)
        outcome = self.call(method, raw)
        self.check(method, outcome)
        assert outcome.code == grpc.StatusCode.OK, f"retry of {method}: {outcome.error}"
        again = response_class(method).FromString(outcome.answers[0])
        assert again.replayed, f"retry of {method} was not a replay"  # type: ignore[attr-defined]
        again.replayed = answer.replayed  # type: ignore[attr-defined]
        assert again == answer, f"retry of {method} answered differently"
        assert digest(self.engine) == before, f"retry of {method} changed rows"

    def harvest(self, method: str, raw: bytes, answers: list[Any]) -> None:
        for answer in answers:
            if method in STREAMING and hasattr(answer, "page_token"):  # a paged stream
                self.pool.remember_token(method, raw, answer.page_token)
        if method == "RunCanary":
            run_id = answers[0].report.run_id
            if run_id not in self.pool.run_ids:
                self.pool.run_ids.append(run_id)
        dataset = getattr(answers[0], "dataset", None) if answers else None
        if dataset is not None and dataset.name:
            key = (dataset.name, dataset.version)
            if key not in self.pool.golden:
                self.pool.golden.append(key)

    # --- property 4 ----------------------------------------------------------------------

    def read_back(self, method: str, answer: object, started: float) -> None:
        """What an accepted write stored reads back at once."""
        since = pb.QueryProvenanceRequest(page_size=10_000)
        since.start_time.FromSeconds(int(started) - 2)
        if method == "WriteProvenanceBatch":
            got = {m.record.id for m in self.checked("QueryProvenance", since)}  # type: ignore[attr-defined]
            ids = set(answer.ids)  # type: ignore[attr-defined]
            assert answer.replayed or ids <= got, ids - got  # type: ignore[attr-defined]
            drift = pb.GetDriftStatsRequest(start_time=since.start_time)
            self.checked("GetDriftStats", drift)
        elif method == "RunCanary":
            report = answer.report  # type: ignore[attr-defined]
            self.checked("GetCanaryReport", pb.GetCanaryReportRequest(run_id=report.run_id))
            window = pb.QueryCanaryReportsRequest(page_size=10_000, start_time=report.timestamp)
            runs = {m.report.run_id for m in self.checked("QueryCanaryReports", window)}  # type: ignore[attr-defined]
            assert report.run_id in runs
        else:
            dataset = answer.dataset  # type: ignore[attr-defined]
            name, version = dataset.name, dataset.version
            self.checked("GetGoldenDataset", pb.GetGoldenDatasetRequest(name=name, version=version))
            self.checked("ListGoldenDatasets", pb.ListGoldenDatasetsRequest(name=name))
            compare = pb.CompareGoldenRequest(name=name, version=version)
            self.checked("CompareGolden", compare)

    def read_everything(self) -> dict[str, int]:
        """Every stream to its end (resumed by token), every list, get, comparison and page."""
        counts: dict[str, int] = {}
        runs: list[str] = []
        for method, query in (
            ("QueryProvenance", pb.QueryProvenanceRequest(page_size=500)),
            ("QueryCanaryReports", pb.QueryCanaryReportsRequest(page_size=500)),
        ):
            seen: list[object] = []
            while True:
                answers = self.checked(method, query)
                seen += answers
                if len(answers) < query.page_size:
                    break
                query.page_token = answers[-1].page_token  # type: ignore[attr-defined]
            counts[method] = len(seen)
            if method == "QueryCanaryReports":
                runs = [answer.report.run_id for answer in seen]  # type: ignore[attr-defined]
                for run_id in runs[:300]:
                    self.checked("GetCanaryReport", pb.GetCanaryReportRequest(run_id=run_id))
        self.checked("GetDriftStats", pb.GetDriftStatsRequest())
        [listed] = self.checked("ListGoldenDatasets", pb.ListGoldenDatasetsRequest())
        datasets = list(listed.datasets)  # type: ignore[attr-defined]
        for dataset in datasets:
            get = pb.GetGoldenDatasetRequest(name=dataset.name, version=dataset.version)
            self.checked("GetGoldenDataset", get)
            if dataset.active:
                self.checked("CompareGolden", pb.CompareGoldenRequest(name=dataset.name))
        counts["golden versions"] = len(datasets)
        pages = [f"/?limit={MAX_LIMIT}", "/golden", *(f"/reports/{quote(r)}" for r in runs[:100])]
        self.dashboard(pages)
        return counts

    def dashboard(self, paths: list[str]) -> None:
        """The dashboard's pages of what was stored render (its reads, over HTTP)."""
        for path in paths:
            with urllib.request.urlopen(self.server.http_url + path, timeout=30) as response:
                assert response.status == 200, path


@pytest.fixture
def contract(server: ServerProcess, channel: grpc.Channel, engine: Engine) -> Contract:
    return Contract(server, channel, engine)


def test_no_request_makes_the_server_fail_hang_or_write_on_refusal(contract):
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=IN_CI,
        # Locally, a failing example is saved (in .hypothesis/) and tried first next time.
        database=None if IN_CI else DEFAULT_DATABASE,
        # The server (a function-scoped fixture) is shared by every example on purpose: the
        # inner function closes over it, so hypothesis sees no fixture to warn about. Large
        # and slow examples are the point here.
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.data())
    def one(data: st.DataObject) -> None:
        contract.example(data)

    one()
    counts = contract.read_everything()
    elapsed = time.monotonic() - started
    summary = {m: dict(c) for m, c in sorted(contract.codes.items())}
    print(f"\n{EXAMPLES} examples in {elapsed:.1f} s; stored {counts}\n{summary}")
    # The run reached past validation: writes were accepted and refused, reads answered.
    if EXAMPLES >= 500:
        assert all(contract.codes[m]["OK"] for m in WRITES), summary
        assert any("MALFORMED_REQUEST" in str(c) for c in summary.values()), summary
    assert "Traceback" not in contract.server.log()
