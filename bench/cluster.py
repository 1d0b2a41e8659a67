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

With `--baseline PATH` (a second gatehouse binary) a second coordinator and two workers
run from that binary, and every round also runs both commands with it, each right after
the candidate's (the baseline first in the warm-up and every even round); a cluster never
mixes binaries. The report then adds each binary's median, min-max and peak RSS (the
coordinator's VmHWM for the cluster, ru_maxrss for `gatehouse run`) and the median of the
per-round ratios candidate/baseline.
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
    BASELINE, alternate_samples, baseline_binary, dag_plan, print_binaries, ratio_spread,
    release_binary, run_main)
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
    p.add_argument("--baseline", type=Path, default=None, metavar="PATH",
                   help="a second gatehouse binary (e.g. built before a change): its own "
                        "coordinator and workers, every round also runs both commands with "
                        "it, and the report puts its figures next to --gatehouse's")
    args = p.parse_args(argv)
    baseline = baseline_binary(p, args.baseline)
    gh = release_binary(args.gatehouse)
    out = args.out.resolve()
    plan = dag_plan(out, f"bench-{args.size}", args.size, args.seed)
    slots = max(1, args.jobs // 2)
    binaries = {"": gh, **({BASELINE: baseline} if baseline else {})}

    logs = tempfile.TemporaryDirectory()
    clusters: dict[str, LocalCluster] = {}
    try:
        # One cluster per binary, all up for the whole run; only one works at a time.
        for suffix, binary in binaries.items():
            d = Path(logs.name) / ("baseline" if suffix else "candidate")
            d.mkdir()
            clusters[suffix] = LocalCluster(binary, d, [
                ["--slots", str(slots), "--workspace", str(out)] for _ in range(2)])
        cmds: dict[str, list[str]] = {}
        for shape in ("cluster", "run"):
            for suffix, binary in binaries.items():
                cmds[shape + suffix] = (
                    [str(binary), "submit", "--watch", "--quiet", "--no-cache",
                     "--coordinator", clusters[suffix].url, str(plan)]
                    if shape == "cluster" else
                    [str(binary), "run", "--no-cache", "-j", str(args.jobs), "--quiet",
                     str(plan)])
        samples = alternate_samples(cmds, args.repeat, out, Path(logs.name),
                                    pairs={k: k + BASELINE for k in ("cluster", "run")}
                                    if baseline else None)
        hwm = {suffix: vm_hwm_kib(c.coordinator.pid) for suffix, c in clusters.items()}
    finally:
        for c in clusters.values():
            c.close()
        logs.cleanup()

    walls = {k: [s.wall for s in v] for k, v in samples.items()}
    ratios = [r / c for c, r in zip(walls["cluster"], walls["run"])]
    ratio = statistics.median(ratios)
    print(f"## Distributed throughput ({args.size:,} gates of `true`, {args.jobs} slots)\n")
    print(f"- machine: nproc {os.cpu_count()}, {os.uname().release}")
    print(f"- {args.repeat} timed rounds after 1 warm-up, commands alternating\n")
    print("| shape | median wall (s) | min–max (s) | gates/s |")
    print("| --- | ---: | ---: | ---: |")
    shapes = (("run", f"gatehouse run -j {args.jobs}"),
              ("cluster", f"coordinator + 2 workers × {slots} slots"))
    for name, label in shapes:
        w = walls[name]
        med = statistics.median(w)
        print(f"| {label} | {med:.3f} | {min(w):.3f}–{max(w):.3f} | {args.size / med:,.0f} |")
    print(f"\nthroughput cluster/run (median of per-round ratios): {ratio:.2f} "
          f"({'PASS' if ratio >= 0.70 else 'MISS'} against the 0.70 target)")
    print(f"coordinator peak RSS (VmHWM) after {args.repeat + 1} plans: {hwm[''] / 1024:.1f} MiB")
    if baseline:
        print_baseline(gh, baseline, walls, samples, hwm, shapes, args.repeat + 1)
    print("\ncommands:\n```\n" + "\n".join(
        " ".join(c).replace(str(REPO) + "/", "") for c in cmds.values()) + "\n```")
    return 0


def print_baseline(gh: Path, baseline: Path, walls: dict[str, list[float]], samples,
                   hwm: dict[str, int], shapes, plans: int) -> None:
    """The candidate's figures next to the baseline's, and the per-round ratios."""
    print("\n### Candidate against baseline\n")
    print_binaries(gh, baseline)
    print("- every round runs both commands with both binaries, one right after the other "
          "(the baseline first in the warm-up and every even round); each binary has its "
          "own coordinator and workers, all up for the whole run\n")
    print("| shape | candidate median (s) | min–max (s) | peak RSS | "
          "baseline median (s) | min–max (s) | peak RSS | candidate/baseline |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, label in shapes:
        cells = []
        for suffix in ("", BASELINE):
            w = walls[name + suffix]
            rss_kib = (hwm[suffix] if name == "cluster"
                       else max(s.maxrss_kib for s in samples[name + suffix]))
            cells.append(f"{statistics.median(w):.3f} | {min(w):.3f}–{max(w):.3f} | "
                         f"{rss_kib / 1024:.1f} MiB")
        print(f"| {label} | {' | '.join(cells)} | "
              f"{ratio_spread(walls[name], walls[name + BASELINE])} |")
    base_ratio = statistics.median(
        r / c for c, r in zip(walls["cluster" + BASELINE], walls["run" + BASELINE]))
    print("\ncandidate/baseline: the median of the per-round ratios of wall times, then")
    print("their min–max; below 1.00 the candidate was faster. Peak RSS: the coordinator's")
    print(f"VmHWM after {plans} plans for the cluster, ru_maxrss (max over the timed runs)")
    print("for `gatehouse run`.")
    print(f"\nbaseline throughput cluster/run (median of per-round ratios): {base_ratio:.2f}")


if __name__ == "__main__":
    run_main(main)
