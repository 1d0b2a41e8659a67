"""A standalone coordinator and its workers on loopback, for the cluster benchmarks.

`LocalCluster(gh, log_dir, worker_args)` starts `gatehouse coordinator --listen
127.0.0.1:0` with its durable plan state in `log_dir/state` (not ./gatehouse-state in the
working directory) and one `gatehouse worker --id bench-wN` per entry of `worker_args`
(extra flags each), waits until every worker is connected, and stops them all (SIGTERM,
then SIGKILL after 30 s) when closed. Logs go to `log_dir`. `global_args` go before the
subcommand of every process (e.g. `--otlp-endpoint URL`), `env` into their environment
(and of `workers()`): with `GATEHOUSE_TLS_CERT` in it the coordinator serves TLS and `url`
is `https://`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from compare import BenchError


def wait_for(what: str, timeout: float, cond) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.05)


class LocalCluster:
    def __init__(self, gh: Path, log_dir: Path, worker_args: list[list[str]],
                 global_args: list[str] | None = None, env: dict[str, str] | None = None):
        self.gh = gh
        self.global_args = global_args or []
        self.env = {**os.environ, **(env or {})}
        self.procs: list[subprocess.Popen] = []
        try:
            ready = log_dir / "coordinator.addr"
            self.coordinator = self._spawn(
                log_dir / "coordinator.log",
                ["coordinator", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
                 "--state-dir", str(log_dir / "state")])
            wait_for("the coordinator's ready file", 20, ready.exists)
            scheme = "https" if self.env.get("GATEHOUSE_TLS_CERT") else "http"
            self.url = f"{scheme}://" + ready.read_text().strip()
            for i, extra in enumerate(worker_args):
                self._spawn(log_dir / f"w{i}.log",
                            ["worker", "--coordinator", self.url, "--id", f"bench-w{i}", *extra])
            wait_for(f"{len(worker_args)} workers to connect", 20,
                     lambda: len(self.workers()) >= len(worker_args))
        except BaseException:
            self.close()
            raise

    def _spawn(self, log: Path, args: list[str]) -> subprocess.Popen:
        with open(log, "w") as out:
            proc = subprocess.Popen([str(self.gh), *self.global_args, *args], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env)
        self.procs.append(proc)
        return proc

    def workers(self) -> list[dict]:
        r = subprocess.run([str(self.gh), "workers", "--json", "--coordinator", self.url],
                           capture_output=True, text=True, env=self.env)
        return json.loads(r.stdout).get("workers", []) if r.returncode == 0 else []

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
