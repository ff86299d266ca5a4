"""A process that increments a shared counter file under a dsync lock, as a user would.

    python counter_worker.py --endpoints A,B,C --dir D --increments N [--pause S]

The counter file stands for a service the lock protects: it does no locking of its own
for the count (read, pause, write back is only safe under the dsync lock) and records
the fencing token of every write in the order the writes arrive, so the test can check
that no two holders overlapped.  Prints {"successes": n, "errors": [...]} as JSON.
Imports only dsync_client, like any user of the installed client.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
from pathlib import Path

from dsync_client import Client, DsyncError

RESOURCE = "counter"


class CounterFile:
    def __init__(self, directory: Path) -> None:
        self.state = directory / "counter.json"
        self.history = directory / "history.log"
        self._mutex = directory / "append.lock"

    def read(self) -> int:
        return int(json.loads(self.state.read_text())["count"])

    def write(self, count: int, token: int) -> None:
        """Store `count` and log `token count`.  The flock only keeps the log and the file
        in one order; it cannot protect a read-modify-write that spans the pause."""
        with open(self._mutex, "w") as mutex:
            fcntl.flock(mutex, fcntl.LOCK_EX)
            with open(self.history, "a") as log:
                log.write(f"{token} {count}\n")
            temp = self.state.with_suffix(f".{os.getpid()}.tmp")
            temp.write_text(json.dumps({"count": count, "token": token}))
            os.replace(temp, self.state)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--increments", type=int, required=True)
    parser.add_argument("--pause", type=float, default=0.02)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds before giving up")
    args = parser.parse_args()
    counter = CounterFile(args.dir)
    successes, errors = 0, []
    give_up = time.monotonic() + args.budget
    with Client(args.endpoints, timeout=15) as client:
        while successes < args.increments and time.monotonic() < give_up:
            written = False
            try:
                with client.lock(RESOURCE, timeout=20, ttl=5) as held:
                    count = counter.read()
                    time.sleep(args.pause)
                    counter.write(count + 1, held.token)
                    written = True
            except DsyncError as error:  # counted, not fatal: the test decides
                errors.append(f"{type(error).__name__}: {error}")
            successes += written
    print(json.dumps({"successes": successes, "errors": errors}))


if __name__ == "__main__":
    main()
