"""bench/soak.py, short: the invariants hold under its whole schedule of load and faults.

The bench runs as its own process (its clients must not share the test's GIL) for a 10-second
schedule: quiet, a slow reader, a flood, a database cut, a SIGKILL and restart, recovery. The
latency ratios are the bench's business; here only what must never happen is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import ADMIN_URL, PostgresServer

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def test_soak_smoke_loses_duplicates_and_fails_nothing(postgres: PostgresServer):
    name = f"costsim_test_soak_{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, str(SOAK), "--seconds", "10", "--seed-rows", "2000"]
    done = subprocess.run(
        [*argv, "--database-url", ADMIN_URL, "--database-name", name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    faults = result["faults"]
    # The schedule ran: streams held, a flood fired, the database cut, the server killed.
    assert faults["slow_streams_opened"] > 0 and faults["flood_waves"] >= 1
    assert faults["db_cut_s"] > 0 and faults["sigkill_to_serving_s"] > 0
    assert result["acknowledged"] > 0 and result["replays_checked"] > 0
    assert result["errors_by_client"]["bad_input"]["INVALID_ARGUMENT"] > 0
    # What must never happen.
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["wrong_ids"] == 0
    assert result["stored"] == result["acknowledged"] + result["stored_unacknowledged"]
    assert result["internal"] == 0 and result["internal_logged"] == 0, done.stdout[-8000:]
    assert result["gave_up"] == 0 and result["replay_mismatches"] == 0
    assert result["bad_input_rows"] == 0
