#!/usr/bin/env python3
"""Landing with bisection: a 20-item queue with one culprit, cold and warm.

Builds, under the output directory (default bench/out/land, git-ignored):

  work/         a repository: `main` with a small project, and --items branches
                (default 20) q01..q20, each from main, each adding its own file
                (items/qNN.txt). Item --culprit (default 13) also adds `culprit.txt`.
  served.git    a bare copy: what the plan resolves against and landing pushes to
  plan.yaml     one item per branch (independent: every combination is untested),
                each with one gate (`check`: its own file is there, --gate-ms of work);
                a `verify` gate (--verify-ms of work) that fails when `culprit.txt`
                and items/q05.txt are both in the tree: each item passes alone, and
                every prefix of the merge order from the culprit on fails

and then measures, each run landing for real on `main` of served.git (reset to its
first commit before every run):

  cold          `gatehouse run --land` on an empty result cache: every item gate runs,
                verify runs on the whole combination (fails), then bisects
  warm          the same command again with the cache kept: the item gates and the
                passing verify runs are cache hits; only the failing verify runs again
                (failures are never cached)

For each: the wall time of the whole command, the gate runs (terminal `gate` lines not
from the cache, item and verify gates), the verify runs asked for, the items landed
and the culprit named. --repeat times each; medians are reported.

  bench/land.py [--gatehouse target/release/gatehouse] [--items 20] [--culprit 13]
                [--repeat 5]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def git(repo, *args):
    env = dict(os.environ, **GIT_ENV)
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(out, items, culprit):
    work = os.path.join(out, "work")
    os.makedirs(work)
    git(work, "init", "--quiet", "-b", "main")
    with open(os.path.join(work, "README"), "w") as f:
        f.write("a queue of changes\n")
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "-m", "base")
    for i in range(1, items + 1):
        name = f"q{i:02d}"
        git(work, "checkout", "--quiet", "-B", name, "main")
        os.makedirs(os.path.join(work, "items"), exist_ok=True)
        with open(os.path.join(work, "items", f"{name}.txt"), "w") as f:
            f.write(f"{name}\n")
        if i == culprit:
            with open(os.path.join(work, "culprit.txt"), "w") as f:
                f.write("breaks q05 in combination\n")
        git(work, "add", "-A")
        git(work, "commit", "--quiet", "-m", name)
    git(work, "checkout", "--quiet", "main")
    served = os.path.join(out, "served.git")
    git(out, "clone", "--quiet", "--bare", work, served)
    return served, git(served, "rev-parse", "main")


def write_plan(out, served, items, gate_ms, verify_ms):
    work = f"sleep {gate_ms / 1000:.3f}"
    lines = [
        "version: 1",
        "name: land-bench",
        "source:",
        f"  repo: file://{served}",
        "  base: main",
        "verify:",
        "  - id: all",
        f"    run: '{'sleep %.3f' % (verify_ms / 1000)} && ! {{ test -f culprit.txt && test -f items/q05.txt; }}'",
        "items:",
    ]
    for i in range(1, items + 1):
        name = f"q{i:02d}"
        lines += [
            f"  - id: {name}",
            f"    ref: {name}",
            "    gates:",
            f"      - {{ id: check, run: '{work} && test -f items/{name}.txt' }}",
        ]
    path = os.path.join(out, "plan.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run(gatehouse, plan, cache):
    start = time.monotonic()
    p = subprocess.run(
        [gatehouse, "run", "--json", "--land", "--cache-dir", cache, plan],
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - start
    if p.returncode not in (0, 1):
        sys.exit(f"gatehouse run failed ({p.returncode}):\n{p.stderr}")
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    terminal = [
        l for l in lines
        if l["event"] == "gate"
        and l["state"] in ("passed", "failed", "timed_out", "skipped", "cancelled")
    ]
    ran = [l for l in terminal if not l["cached"]]
    land = lines[-1]
    return {
        "wall": wall,
        "item_runs": sum(1 for l in ran if not l["gate"].startswith("verify/")),
        "verify_gate_runs": sum(1 for l in ran if l["gate"].startswith("verify/")),
        "verify_asked": land["verify_runs"],
        "landed": len(land["landed"]),
        "culprit": [o["item"] for o in land["left_out"] if o["reason"] == "culprit"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gatehouse", default="target/release/gatehouse")
    ap.add_argument("--out", default="bench/out/land")
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--culprit", type=int, default=13)
    ap.add_argument("--gate-ms", type=int, default=100)
    ap.add_argument("--verify-ms", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    gatehouse = os.path.abspath(args.gatehouse)
    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    served, base = make_repo(out, args.items, args.culprit)
    plan = write_plan(out, served, args.items, args.gate_ms, args.verify_ms)
    print(
        f"{args.items} independent items, culprit q{args.culprit:02d}, item gate "
        f"{args.gate_ms} ms, verify {args.verify_ms} ms, {os.cpu_count()} CPUs"
    )
    results = {"cold": [], "warm": []}
    for _ in range(args.repeat):
        cache = os.path.join(out, "cache")
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(os.path.join(out, ".gatehouse"), ignore_errors=True)
        for kind in ("cold", "warm"):
            git(served, "update-ref", "refs/heads/main", base)
            results[kind].append(run(gatehouse, plan, cache))
    print(f"{'':6} {'wall (median)':>14} {'item gate runs':>15} {'verify runs':>12} "
          f"{'verify asked':>13} {'landed':>7}  culprit")
    for kind, rs in results.items():
        r0 = rs[0]
        print(
            f"{kind:6} {statistics.median(r['wall'] for r in rs):13.2f}s "
            f"{r0['item_runs']:>15} {r0['verify_gate_runs']:>12} {r0['verify_asked']:>13} "
            f"{r0['landed']:>7}  {','.join(r0['culprit'])}"
        )
        walls = ", ".join(f"{r['wall']:.2f}" for r in rs)
        print(f"       runs: {walls}")


if __name__ == "__main__":
    main()
