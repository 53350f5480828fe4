"""COSTSIM_PROCESSES, the restart policy of ``serve --processes`` and its port reservation."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from costsim_analytics.api.supervisor import Backoff, RestartPolicy, reserve_port, worker_env
from costsim_analytics.settings import MAX_PROCESSES, Settings, available_cpus


def processes(value: object) -> int:
    return Settings(processes=value).processes


def test_processes_default_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COSTSIM_PROCESSES", raising=False)
    assert Settings().processes == 1


@pytest.mark.parametrize(("value", "expected"), [("1", 1), (" 8 ", 8), ("64", 64), (3, 3)])
def test_processes_accept_whole_numbers_from_1_to_64(value: object, expected: int) -> None:
    assert processes(value) == expected


def test_auto_is_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    assert processes("auto") == min(available_cpus(), MAX_PROCESSES)
    assert processes("AUTO") == processes("auto")
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(200)))
    assert processes("auto") == MAX_PROCESSES


def test_the_environment_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTSIM_PROCESSES", "4")
    assert Settings().processes == 4


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "1.5", "", "2 4", 0, 65])
def test_other_values_are_refused_naming_the_setting(value: object) -> None:
    with pytest.raises(ValidationError) as exc:
        processes(value)
    assert [error["loc"] for error in exc.value.errors()] == [("processes",)]


def test_backoff_doubles_from_half_a_second_to_ten() -> None:
    backoff = Backoff(RestartPolicy(max_fast_exits=100))
    delays = [backoff.after_exit(lived_s=0.1) for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_five_fast_exits_in_a_row_are_a_crash_loop() -> None:
    backoff = Backoff(RestartPolicy())
    assert [backoff.after_exit(lived_s=29.9) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff.after_exit(lived_s=29.9) is None
    assert backoff.fast_exits == 5


def test_a_child_that_lived_long_resets_the_delay_and_the_count() -> None:
    backoff = Backoff(RestartPolicy())
    for _ in range(4):
        backoff.after_exit(lived_s=1.0)
    assert backoff.after_exit(lived_s=30.0) == 0.5
    assert backoff.fast_exits == 0
    # Four more fast exits are allowed again before the fifth gives up.
    assert [backoff.after_exit(lived_s=1.0) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, None]


def test_the_policy_is_configurable() -> None:
    policy = RestartPolicy(initial_delay_s=0.1, max_delay_s=0.3, stable_after_s=5, max_fast_exits=2)
    backoff = Backoff(policy)
    assert backoff.after_exit(lived_s=4.9) == 0.1
    assert backoff.after_exit(lived_s=4.9) is None


def test_worker_env_carries_the_command_line_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTSIM_LOG_LEVEL", "DEBUG")
    monkeypatch.delenv("COSTSIM_LISTEN", raising=False)
    env = worker_env(
        {"database_url": "postgresql+psycopg://db/x", "insecure": True, "listen": None}
    )
    assert env["COSTSIM_DATABASE_URL"] == "postgresql+psycopg://db/x"
    assert env["COSTSIM_INSECURE"] == "true"
    assert env["COSTSIM_LOG_LEVEL"] == "DEBUG"
    assert "COSTSIM_LISTEN" not in env  # a flag not given is not set


def test_a_reserved_port_is_shared_only_with_reuseport_sockets() -> None:
    held, address = reserve_port("127.0.0.1:0")
    try:
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        # Another SO_REUSEPORT socket (a child's) binds the same port...
        shared, again = reserve_port(address)
        shared.close()
        assert again == address
        # ...a plain one (another server) cannot take it.
        with socket.socket() as plain, pytest.raises(OSError, match="in use"):
            plain.bind(("127.0.0.1", int(port)))
    finally:
        held.close()


def test_an_address_that_cannot_be_bound_is_an_os_error() -> None:
    with pytest.raises(OSError, match=r"cannot listen on 192\.0\.2\.1:0"):
        reserve_port("192.0.2.1:0")
