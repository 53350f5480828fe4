"""``canary run`` exit codes: only a pass is 0; a skipped run is retried with --wait."""

import pytest
from typer.testing import CliRunner

from costsim_analytics.cli import canary


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("CANARY_STATUS_PASS", 0),
        ("CANARY_STATUS_FAIL", 1),
        ("CANARY_STATUS_ERROR", 3),
        ("", 3),
        ("CANARY_STATUS_SKIPPED", 4),
        ("CANARY_STATUS_INCONCLUSIVE", 5),
    ],
)
def test_exit_codes(status, code):
    assert canary._exit_code({"status": status}) == code


def _fake_runs(monkeypatch, statuses):
    calls = []

    def run_local(request, database_url, artifacts_dir):
        calls.append(request)
        return {"status": statuses[min(len(calls), len(statuses)) - 1], "run_id": "r"}

    monkeypatch.setattr(canary, "_run_local", run_local)
    monkeypatch.setattr(canary, "RETRY_S", 0.01)
    return calls


def test_a_skipped_run_exits_4_without_wait(monkeypatch):
    calls = _fake_runs(monkeypatch, ["CANARY_STATUS_SKIPPED"])
    result = CliRunner().invoke(canary.app, ["run", "--local", "--json"])
    assert result.exit_code == canary.EXIT_SKIPPED and len(calls) == 1


def test_wait_asks_again_until_the_lock_is_free(monkeypatch):
    statuses = ["CANARY_STATUS_SKIPPED", "CANARY_STATUS_SKIPPED", "CANARY_STATUS_PASS"]
    calls = _fake_runs(monkeypatch, statuses)
    result = CliRunner().invoke(canary.app, ["run", "--local", "--json", "--wait", "30"])
    assert result.exit_code == 0 and len(calls) == 3


def test_wait_gives_up_at_its_deadline(monkeypatch):
    calls = _fake_runs(monkeypatch, ["CANARY_STATUS_SKIPPED"])
    result = CliRunner().invoke(canary.app, ["run", "--local", "--json", "--wait", "0.05"])
    assert result.exit_code == canary.EXIT_SKIPPED and 2 <= len(calls) <= 10


def test_the_judge_is_sent_with_the_request(monkeypatch):
    calls = _fake_runs(monkeypatch, ["CANARY_STATUS_INCONCLUSIVE"])
    result = CliRunner().invoke(canary.app, ["run", "--local", "--json", "--judge", "legacy"])
    assert result.exit_code == canary.EXIT_INCONCLUSIVE and calls[0]["judge"] == "legacy"
