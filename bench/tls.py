#!/usr/bin/env python3
"""TLS overhead: the 10,000-gate DAG of distinct `true` commands through a cluster whose every gRPC connection
is mutual TLS, against the same cluster in plaintext, side by side.

Two clusters on loopback, each a coordinator and two workers with `--slots S` (S = jobs
/ 2) that are also cache nodes (`--cache-listen`):

    mtls:  GATEHOUSE_TLS_{CERT,KEY,CA}=proto/testdata/tls/test* GATEHOUSE_TLS_CLIENT_AUTH=true
           gatehouse coordinator|worker ...   (https:// URLs)
    plain: gatehouse coordinator|worker ...

and alternates, after one warm-up round each (which also fills each cluster's cache):

    gatehouse submit --watch --quiet --no-cache --coordinator URL bench-distinct-N.yaml  (every gate runs)
    gatehouse submit --watch --quiet --coordinator URL bench-distinct-N.yaml             (every gate a hit)

The first measures the worker sessions and the client's watch over TLS; the second the
coordinator's 10,000 cache lookups to the cache nodes over TLS. Reports the median wall
time of each and the median of the per-round ratios mtls/plain. Exits 0 whatever the
numbers say; non-zero only on errors.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (  # noqa: E402
    BenchError, alternate, cached_count, dag_plan, print_walls, release_binary, round_ratio,
    run_main)
from local_cluster import LocalCluster  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CERTS = REPO / "proto/testdata/tls"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="total slots (default 2)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--gatehouse", type=Path, default=REPO / "target/release/gatehouse")
    p.add_argument("--out", type=Path, default=REPO / "bench/out")
    args = p.parse_args(argv)
    gh = release_binary(args.gatehouse)
    out = args.out.resolve()
    # Distinct gates (each command differs), so every gate has its own cache entry.
    plan = dag_plan(out, f"bench-distinct-{args.size}", args.size, args.seed, distinct=True)
    slots = max(1, args.jobs // 2)
    tls_env = {
        "GATEHOUSE_TLS_CERT": str(CERTS / "test.pem"),
        "GATEHOUSE_TLS_KEY": str(CERTS / "test-key.pem"),
        "GATEHOUSE_TLS_CA": str(CERTS / "test-ca.pem"),
        "GATEHOUSE_TLS_CLIENT_AUTH": "true",
    }
    logs = tempfile.TemporaryDirectory()
    clusters: dict[str, LocalCluster] = {}
    try:
        worker_args = [["--slots", str(slots), "--workspace", str(out),
                        "--cache-listen", "127.0.0.1:0"] for _ in range(2)]
        for name, env in (("mtls", tls_env), ("plain", {})):
            d = Path(logs.name) / name
            d.mkdir()
            clusters[name] = LocalCluster(gh, d, worker_args, env=env)
        cmds, envs = {}, {}
        for name, c in clusters.items():
            for mode, flags in (("runs", ["--no-cache"]), ("hits", [])):
                key = f"{mode} {name}"
                cmds[key] = [str(gh), "submit", "--watch", "--quiet", *flags,
                             "--coordinator", c.url, str(plan)]
                envs[key] = c.env

        def all_hits_after_warm_up(name: str, rnd: int, s) -> None:
            counts = cached_count(s.output)
            want_cached = args.size if name.startswith("hits") and rnd > 0 else 0
            if counts is None or counts[1] != want_cached:
                raise BenchError(f"{name}: expected {want_cached} cached gates, got "
                                 f"{counts}:\n{s.output[-500:]}")

        walls = alternate(cmds, args.repeat, out, Path(logs.name), envs,
                          check=all_hits_after_warm_up)
    finally:
        for c in clusters.values():
            c.close()
        logs.cleanup()

    print(f"## TLS overhead ({args.size:,} distinct gates of `true`, {args.jobs} slots)\n")
    print_walls(walls, args.repeat)
    for mode in ("runs", "hits"):
        ratio = round_ratio(walls, f"{mode} mtls", f"{mode} plain")
        print(f"\n{mode}: mtls/plain (median of per-round ratios) {ratio:.3f}, "
              f"overhead {100 * (ratio - 1):+.1f}%")
    print("\ncommands:\n```\n" + "\n".join(
        " ".join(c).replace(str(REPO) + "/", "") for c in cmds.values()) + "\n```")
    return 0


if __name__ == "__main__":
    run_main(main)
