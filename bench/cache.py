#!/usr/bin/env python3
"""The shared result cache end to end: a fully cached 10,000-gate plan through the
cluster, and the hit rate of a realistic re-run.

Starts `gatehouse coordinator --listen 127.0.0.1:0 --state-dir TMP/state` and two
`gatehouse worker --slots 1 --cache-listen 127.0.0.1:0` processes (two cache nodes,
R = 2), then:

1. **Fully cached plan.** The 10,000-gate DAG of bench/compare.py, every gate with its
   own key (`env: {BENCH_GATE: id}`), is run once to fill the cache (and once with
   `gatehouse run` to fill its local cache). Then, alternating, `--repeat` times:

       gatehouse submit --watch --quiet --coordinator URL bench-cache-N.yaml
       gatehouse run --quiet -j 2 bench-cache-N.yaml

   Both must report every gate cached; the median wall times are reported (target for
   the cluster: under 2 s).

2. **Re-run mix.** A merge pyramid of `--items` pull requests (4 gates each: lint,
   build, test needs build, e2e needs test), each stacked on at most one earlier PR,
   every gate keyed by its PR's commit (`env: {COMMIT: ...}`). Run once; then a push
   to `--changed` (default 10%) of the PRs gives them new commits and the plan runs
   again. A gate must run again iff its PR or a PR below it changed; everything else
   is a hit. Reports the hit rate and whether it equals that prediction exactly.

Exits 0 whatever the numbers say; non-zero only on errors (including a wrong count).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (  # noqa: E402  (the generator and timer are shared)
    BenchError, dag_plan, release_binary, run_main, run_timed)
from local_cluster import LocalCluster, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pyramid(items: int, seed: int, commits: dict[int, str]) -> tuple[str, list[int | None]]:
    """The pyramid plan and each PR's base (None: on main)."""
    rng = random.Random(seed)
    base: list[int | None] = []
    lines = ["version: 1", "name: pyramid", "items:"]
    for i in range(items):
        b = rng.randrange(0, i) if i > 0 and rng.random() < 0.6 else None
        base.append(b)
        lines.append(f"  - id: pr-{i}")
        if b is not None:
            lines.append(f"    deps: [pr-{b}]")
        env = f'env: {{ COMMIT: "{commits[i]}" }}'
        lines.append("    gates:")
        lines.append(f'      - {{ id: lint, run: "true lint", {env} }}')
        lines.append(f'      - {{ id: build, run: "true build", {env} }}')
        lines.append(f'      - {{ id: test, run: "true test", needs: [build], {env} }}')
        lines.append(f'      - {{ id: e2e, run: "true e2e", needs: [test], {env} }}')
    return "\n".join(lines) + "\n", base


def submit_json(gh: Path, url: str, plan: Path, cwd: Path) -> dict:
    r = subprocess.run([str(gh), "submit", "--watch", "--json", "--coordinator", url, str(plan)],
                       capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        raise BenchError(f"submit failed ({r.returncode}): {r.stderr[-2000:]}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    return summary


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--miss-rounds", type=int, default=3)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--changed", type=float, default=0.10)
    p.add_argument("--gatehouse", type=Path, default=REPO / "target/release/gatehouse")
    p.add_argument("--out", type=Path, default=REPO / "bench/out")
    args = p.parse_args(argv)
    gh = release_binary(args.gatehouse)
    out = args.out.resolve()
    plan = dag_plan(out, f"bench-cache-{args.size}", args.size, args.seed, distinct=True)

    logs = tempfile.TemporaryDirectory()
    cluster = None
    try:
        cluster = LocalCluster(gh, Path(logs.name), [
            ["--slots", "1", "--workspace", str(out), "--cache-listen", "127.0.0.1:0"]
            for _ in range(2)])
        url = cluster.url

        def stats() -> dict:
            r = subprocess.run([str(gh), "cache", "stats", "--json", "--coordinator", url],
                               capture_output=True, text=True)
            return json.loads(r.stdout) if r.returncode == 0 else {}

        wait_for("two cache nodes", 20, lambda: len(stats().get("nodes", [])) == 2)

        # 0. The miss path: a cache-enabled run of new keys (every lookup misses, every
        #    result is written to two replicas) against the same plan with --no-cache.
        miss_walls: dict[str, list[float]] = {"misses": [], "no-cache": []}
        for rnd in range(args.miss_rounds):
            salted = out / f"bench-cache-miss-{rnd}.yaml"
            text = plan.read_text().replace("gates:\n", f"policy:\n  cache_salt: r{rnd}\ngates:\n", 1)
            salted.write_text(text)
            for name, extra in (("misses", []), ("no-cache", ["--no-cache"])):
                cmd = [str(gh), "submit", "--watch", "--quiet", *extra, "--coordinator", url,
                       str(salted)]
                miss_walls[name].append(run_timed(cmd, out, Path(logs.name)).wall)
            print(f"[miss round {rnd + 1}/{args.miss_rounds}] all misses "
                  f"{miss_walls['misses'][-1]:.3f}s  --no-cache {miss_walls['no-cache'][-1]:.3f}s",
                  file=sys.stderr)

        # 1. Fully cached plan.
        local_cache = Path(logs.name) / "local-cache"
        cluster_cmd = [str(gh), "submit", "--watch", "--quiet", "--coordinator", url, str(plan)]
        run_cmd = [str(gh), "run", "--quiet", "-j", "2", "--cache-dir", str(local_cache),
                   str(plan)]
        fill = run_timed(cluster_cmd, out, Path(logs.name))
        run_timed(run_cmd, out, Path(logs.name))
        print(f"[fill] cluster {fill.wall:.3f}s", file=sys.stderr)
        wait_for("every entry on both replicas", 60,
                 lambda: stats().get("total", {}).get("puts", 0) >= 2 * args.size)
        walls: dict[str, list[float]] = {"cluster": [], "run": []}
        for rnd in range(args.repeat):
            for name, cmd in (("cluster", cluster_cmd), ("run", run_cmd)):
                s = run_timed(cmd, out, Path(logs.name))
                m = re.search(r"(\d+) cached", s.output)
                if not m or int(m.group(1)) != args.size:
                    raise BenchError(f"{name}: not every gate was cached:\n{s.output[-500:]}")
                walls[name].append(s.wall)
            print(f"[round {rnd + 1}/{args.repeat}] cluster {walls['cluster'][-1]:.3f}s  "
                  f"run {walls['run'][-1]:.3f}s", file=sys.stderr)
        node_stats = stats()

        # 2. Re-run mix.
        rng = random.Random(args.seed)
        commits = {i: f"{rng.getrandbits(64):016x}" for i in range(args.items)}
        doc, base = pyramid(args.items, args.seed, commits)
        pyr = out / "bench-cache-pyramid.yaml"
        pyr.write_text(doc)
        first = submit_json(gh, url, pyr, out)
        changed = set(rng.sample(range(args.items), max(1, int(args.items * args.changed))))
        for i in changed:
            commits[i] = f"{rng.getrandbits(64):016x}"
        # A PR re-runs if it or any PR below it changed.
        dirty = [False] * args.items
        for i in range(args.items):
            dirty[i] = i in changed or (base[i] is not None and dirty[base[i]])
        expect_miss = 4 * sum(dirty)
        doc, _ = pyramid(args.items, args.seed, commits)
        pyr.write_text(doc)
        wait_for("the first pyramid's entries", 60,
                 lambda: stats().get("total", {}).get("puts", 0)
                 >= 2 * args.size + 2 * 4 * args.items)
        second = submit_json(gh, url, pyr, out)
    finally:
        if cluster:
            cluster.close()
        logs.cleanup()

    cm, rm = statistics.median(walls["cluster"]), statistics.median(walls["run"])
    print(f"## Shared cache: a fully cached {args.size:,}-gate plan\n")
    print(f"- machine: nproc {os.cpu_count()}, {os.uname().release}")
    print(f"- coordinator + 2 workers (1 slot each, both cache nodes, R = 2), loopback; "
          f"{args.repeat} rounds after filling the cache, commands alternating\n")
    print("| shape | median wall (s) | min–max (s) | gates/s |")
    print("| --- | ---: | ---: | ---: |")
    for name, label in (("cluster", "cluster: `submit --watch`, all cached"),
                        ("run", "`gatehouse run -j 2`, all cached (local disk)")):
        w = walls[name]
        med = statistics.median(w)
        print(f"| {label} | {med:.3f} | {min(w):.3f}–{max(w):.3f} | {args.size / med:,.0f} |")
    print(f"\ncluster, fully cached: {cm:.2f} s ({'PASS' if cm < 2.0 else 'MISS'} against "
          f"the 2 s target); the local run: {rm:.2f} s")
    if miss_walls["misses"]:
        mm, nm = statistics.median(miss_walls["misses"]), statistics.median(miss_walls["no-cache"])
        print(f"\nthe miss path ({args.miss_rounds} rounds, new keys each): cache on, every lookup a "
              f"miss and every result written to 2 replicas: {mm:.2f} s median; the same plan "
              f"with `--no-cache`: {nm:.2f} s (ratio {nm / mm:.2f})")
    totals = node_stats.get("total", {})
    print(f"cache nodes after the rounds: {totals.get('memory_entries')} entries "
          f"({totals.get('memory_bytes', 0) / 1e6:.1f} MB with overhead) over 2 nodes, "
          f"hit rate of replica lookups {totals.get('hit_rate', 0) * 100:.1f}%")
    g1, g2 = first["gates"], second["gates"]
    total = g2["total"]
    hits = g2["cached"]
    print(f"\n## Re-run mix: {args.items} stacked PRs × 4 gates, "
          f"{len(changed)} PRs ({args.changed:.0%}) pushed again\n")
    print(f"- first run: {g1['cached']} of {g1['total']} cached")
    print(f"- re-run: {hits} of {total} cached, hit rate {hits / total:.1%}; "
          f"{total - hits} ran again, predicted {expect_miss} "
          f"(the changed PRs and every PR stacked on them): "
          f"{'exact' if total - hits == expect_miss else 'MISMATCH'}")
    print("\ncommands:\n```\n" + " ".join(cluster_cmd).replace(str(REPO) + "/", "").replace(url, "URL")
          + "\n" + " ".join(run_cmd).replace(str(REPO) + "/", "").replace(str(local_cache), "TMP/local-cache")
          + "\n```")
    if total - hits != expect_miss:
        raise BenchError("the re-run's misses differ from the prediction")
    return 0


if __name__ == "__main__":
    run_main(main)
