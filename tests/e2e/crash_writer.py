"""A writer process for the crash test: adds records to a spool and dies where it is told.

``python -m tests.e2e.crash_writer ADDRESS SPOOL TAG FIRST COUNT MODE N SEED`` adds records
``TAG-FIRST`` .. ``TAG-(FIRST+COUNT-1)``, printing ``ADDED <run id>`` after each ``add()``
returns, then closes the writer and prints ``CLOSED``. MODE says where it kills itself with
SIGKILL (``N`` counts the events):

* ``none``: nowhere (the parent may kill it at a random moment);
* ``torn``: in the middle of its N-th spool write (half a frame written: a record in
  ``add()``, a batch's seal or acknowledgement);
* ``mid_batch``: a few milliseconds after its N-th batch went out, before the answer is seen;
* ``after_ack``: after the server acknowledged its N-th batch, before the spool forgets it.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from typing import Any

from costsim_analytics.client import AnalyticsClient, ProvenanceWriter, RetryPolicy, WriterHooks
from costsim_analytics.client.spool import Spool
from tests.factories import provenance_json


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Countdown:
    def __init__(self, n: int) -> None:
        self.left = n

    def hit(self) -> bool:
        self.left -= 1
        return self.left == 0


def arm(mode: str, n: int, rng: random.Random) -> WriterHooks:
    countdown = Countdown(n)
    if mode == "torn":
        write_now = Spool._write_now

        def torn(self: Spool, data: bytes, *, sync: bool = True) -> None:
            if countdown.hit():
                os.write(self._fd, data[: max(1, len(data) // 2)])
                die()
            write_now(self, data, sync=sync)

        Spool._write_now = torn  # type: ignore[method-assign]
    elif mode == "mid_batch":
        send = AnalyticsClient.send_encoded
        pause = rng.uniform(0.0, 0.02)

        def sent(self: AnalyticsClient, body: bytes, timeout_s: float) -> Any:
            future = send(self, body, timeout_s)
            if countdown.hit():
                time.sleep(pause)
                die()
            return future

        AnalyticsClient.send_encoded = sent  # type: ignore[method-assign]

    class Hooks(WriterHooks):
        def batch_acked(self, batch: Any, replayed: bool) -> None:
            if mode == "after_ack" and countdown.hit():
                die()

    return Hooks()


def main() -> None:
    address, spool, tag, first, count, mode, n, seed = sys.argv[1:]
    rng = random.Random(int(seed))
    hooks = arm(mode, int(n), rng)
    retry = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5)
    with (
        AnalyticsClient(address, retry=retry) as client,
        ProvenanceWriter(
            client, spool=spool, hooks=hooks, max_batch_records=25, max_delay_s=0.02
        ) as writer,
    ):
        print(f"OPEN {writer.recovery.records if writer.recovery else 0}", flush=True)
        for i in range(int(first), int(first) + int(count)):
            run_id = f"{tag}-{i}"
            writer.add(**provenance_json(i, run_id=run_id, tenant_id=tag[:20]))
            print(f"ADDED {run_id}", flush=True)
            if i % 10 == 0:
                time.sleep(0.001)
        writer.flush(timeout_s=60)
    print("CLOSED", flush=True)


if __name__ == "__main__":
    main()
