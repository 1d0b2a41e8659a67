#!/usr/bin/env python3
"""Tracing overhead: the 10,000-gate `true` DAG through a cluster that exports traces
over OTLP, against the same cluster shape without traces, side by side.

Starts an OTLP/gRPC receiver (`tests/support/otlp_sink.py --count`, the `oteltest`
package's GrpcSink, from the venv of `scripts/test-deps.sh`; run under `nice` so the
receiver, which in production runs elsewhere, takes only spare CPU), then two clusters
on loopback, each a coordinator and two workers with `--slots S` (S = jobs / 2):

    traced:   gatehouse --otlp-endpoint http://127.0.0.1:PORT coordinator|worker ...
    untraced: gatehouse coordinator|worker ...

and alternates, after one warm-up round each:

    gatehouse submit --watch --quiet --no-cache --coordinator URL bench-N.yaml

reporting the median wall time of each, the overhead traced/untraced - 1 (target:
under 10%), and how many spans the receiver got (so dropped spans cannot hide cost).
The batch queue is raised (OTEL_BSP_MAX_QUEUE_SIZE) so no span is dropped. Also times
`gatehouse run` with and without export the same way. Exits 0 whatever the numbers
say; non-zero only on errors.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (  # noqa: E402
    BenchError, BenchUsage, alternate, dag_plan, print_walls, release_binary, round_ratio,
    run_main)
from local_cluster import LocalCluster  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SINK = REPO / "tests/support/otlp_sink.py"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="total slots (default 2)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--gatehouse", type=Path, default=REPO / "target/release/gatehouse")
    p.add_argument("--python", type=Path, default=REPO / "target/test-venv/bin/python",
                   help="a Python with oteltest (scripts/test-deps.sh makes it)")
    p.add_argument("--out", type=Path, default=REPO / "bench/out")
    args = p.parse_args(argv)
    gh = release_binary(args.gatehouse)
    if not args.python.exists():
        raise BenchUsage(f"{args.python} not found; run scripts/test-deps.sh first")
    out = args.out.resolve()
    plan = dag_plan(out, f"bench-{args.size}", args.size, args.seed)
    slots = max(1, args.jobs // 2)

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    sink = subprocess.Popen(["nice", "-n", "10", str(args.python), str(SINK), str(port),
                             "--count"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    if sink.stdout is None or sink.stdout.readline().strip() != f"listening {port}":
        raise BenchError("the OTLP receiver did not start")
    # Enough queue that nothing is dropped: the cost of exporting every span is measured.
    env = {"OTEL_BSP_MAX_QUEUE_SIZE": "262144"}
    logs = tempfile.TemporaryDirectory()
    clusters: dict[str, LocalCluster] = {}
    spans = -1
    try:
        worker_args = [["--slots", str(slots), "--workspace", str(out)] for _ in range(2)]
        for name, glob in (("traced", ["--otlp-endpoint", endpoint]), ("untraced", [])):
            d = Path(logs.name) / name
            d.mkdir()
            clusters[name] = LocalCluster(gh, d, worker_args, global_args=glob, env=env)
        cmds = {
            "cluster traced": [str(gh), "submit", "--watch", "--quiet", "--no-cache",
                               "--coordinator", clusters["traced"].url, str(plan)],
            "cluster untraced": [str(gh), "submit", "--watch", "--quiet", "--no-cache",
                                 "--coordinator", clusters["untraced"].url, str(plan)],
            "run traced": [str(gh), "--otlp-endpoint", endpoint, "run", "--no-cache", "-j",
                           str(args.jobs), "--quiet", str(plan)],
            "run untraced": [str(gh), "run", "--no-cache", "-j", str(args.jobs), "--quiet",
                             str(plan)],
        }
        walls = alternate(cmds, args.repeat, out, Path(logs.name))
    finally:
        for c in clusters.values():
            c.close()
        logs.cleanup()
        try:
            # Closing its stdin ends the receiver, which prints its count.
            tail = sink.communicate(input="", timeout=30)[0]
            spans = int(tail.split()[-1]) if tail.strip() else -1
        except subprocess.TimeoutExpired:
            sink.kill()

    print(f"## Tracing overhead ({args.size:,} gates of `true`, {args.jobs} slots)\n")
    print_walls(walls, args.repeat)
    for shape in ("cluster", "run"):
        ratio = round_ratio(walls, f"{shape} traced", f"{shape} untraced")
        verdict = "PASS" if ratio < 1.10 else "MISS"
        print(f"\n{shape}: traced/untraced (median of per-round ratios) {ratio:.3f}, "
              f"overhead {100 * (ratio - 1):+.1f}% ({verdict} against the 10% target)")
    runs = (args.repeat + 1) * 2  # traced cluster plans and traced local runs
    print(f"\nspans received: {spans:,} over {runs} traced plans "
          f"(about {spans / runs:,.0f} per plan of {args.size:,} gates)")
    print("\ncommands:\n```\n" + "\n".join(
        " ".join(c).replace(str(REPO) + "/", "") for c in cmds.values()) + "\n```")
    return 0


if __name__ == "__main__":
    run_main(main)
