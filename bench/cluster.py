#!/usr/bin/env python3
"""Distributed throughput: the 10,000-gate `true` DAG through one coordinator and two
workers on loopback, against `gatehouse run` on the same DAG at the same parallelism.

Starts `gatehouse coordinator --listen 127.0.0.1:0 --state-dir TMP/state` (its durable
plan state goes to a temp dir, removed at the end) and two `gatehouse worker --slots S`
processes (S = jobs / 2), waits until both are connected, then alternates, after one
warm-up round:

    gatehouse submit --watch --quiet --no-cache --coordinator URL bench-N.yaml
    gatehouse run --no-cache -j JOBS --quiet bench-N.yaml

and reports the median wall time of each, gates per second, the throughput ratio
cluster/run (target: at least 0.70), and the coordinator's peak RSS (VmHWM) after all
rounds. Exits 0 whatever the numbers say; non-zero only on errors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (  # noqa: E402  (the generator and timer are shared)
    dag_plan, release_binary, run_main, run_timed)
from local_cluster import LocalCluster  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="total slots (default 2)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--gatehouse", type=Path, default=REPO / "target/release/gatehouse")
    p.add_argument("--out", type=Path, default=REPO / "bench/out")
    args = p.parse_args(argv)
    gh = release_binary(args.gatehouse)
    out = args.out.resolve()
    plan = dag_plan(out, f"bench-{args.size}", args.size, args.seed)
    slots = max(1, args.jobs // 2)

    logs = tempfile.TemporaryDirectory()
    cluster = None
    try:
        cluster = LocalCluster(gh, Path(logs.name), [
            ["--slots", str(slots), "--workspace", str(out)] for _ in range(2)])
        coord, url = cluster.coordinator, cluster.url
        cluster_cmd = [str(gh), "submit", "--watch", "--quiet", "--no-cache",
                       "--coordinator", url, str(plan)]
        run_cmd = [str(gh), "run", "--no-cache", "-j", str(args.jobs), "--quiet", str(plan)]
        walls: dict[str, list[float]] = {"cluster": [], "run": []}
        for rnd in range(args.repeat + 1):
            for name, cmd in (("cluster", cluster_cmd), ("run", run_cmd)):
                s = run_timed(cmd, out, Path(logs.name))
                if rnd > 0:
                    walls[name].append(s.wall)
            label = "warm-up" if rnd == 0 else f"round {rnd}/{args.repeat}"
            print(f"[{label}] cluster {walls['cluster'][-1] if rnd else 0:.3f}s  "
                  f"run {walls['run'][-1] if rnd else 0:.3f}s", file=sys.stderr)
        hwm = vm_hwm_kib(coord.pid)
    finally:
        if cluster:
            cluster.close()
        logs.cleanup()

    ratios = [r / c for c, r in zip(walls["cluster"], walls["run"])]
    ratio = statistics.median(ratios)
    print(f"## Distributed throughput ({args.size:,} gates of `true`, {args.jobs} slots)\n")
    print(f"- machine: nproc {os.cpu_count()}, {os.uname().release}")
    print(f"- {args.repeat} timed rounds after 1 warm-up, commands alternating\n")
    print("| shape | median wall (s) | min–max (s) | gates/s |")
    print("| --- | ---: | ---: | ---: |")
    for name, label in (("run", f"gatehouse run -j {args.jobs}"),
                        ("cluster", f"coordinator + 2 workers × {slots} slots")):
        w = walls[name]
        med = statistics.median(w)
        print(f"| {label} | {med:.3f} | {min(w):.3f}–{max(w):.3f} | {args.size / med:,.0f} |")
    print(f"\nthroughput cluster/run (median of per-round ratios): {ratio:.2f} "
          f"({'PASS' if ratio >= 0.70 else 'MISS'} against the 0.70 target)")
    print(f"coordinator peak RSS (VmHWM) after {args.repeat + 1} plans: {hwm / 1024:.1f} MiB")
    print("\ncommands:\n```\n" + " ".join(cluster_cmd).replace(str(REPO) + "/", "")
          + "\n" + " ".join(run_cmd).replace(str(REPO) + "/", "") + "\n```")
    return 0


if __name__ == "__main__":
    run_main(main)
