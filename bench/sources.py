#!/usr/bin/env python3
"""Source-aware plans at scale: a synthetic repository and a 50-item stack over it.

Builds, under the output directory (default bench/out/sources, git-ignored):

  repo/         a repository of --files files (default 10,000, in 100 directories) and
                --commits commits on `main` (default 1,000, each editing 5 files), made
                with `git fast-import` (fixed identity and dates: the same ids on every
                machine), plus a stack of --items branches (default 50): stack/1 on main,
                stack/2 on stack/1, ..., each editing one file
  plan.yaml     one item per branch, item i depending on item i-1; two gates per item:
                `build` (no inputs: keyed on the whole tree) and `test` (inputs
                `d07/**`: keyed on the entries it matches, read with ls-tree)

and then measures, alternating nothing (each step depends on the one before):

  cold run      gatehouse run on an empty git cache and result cache: fetch everything,
                prepare every speculative state and key, check out and run 100 gates
  prepare       the `source prepared` time of every warm run (ref listing, merges, trees,
                ls-tree of every tree a gate with inputs reads), from the log
  checkout      the `checked out` time of each of the cold run's 100 checkouts of a
                10,000-file tree from a mirror that has the objects, from the log
  warm run      gatehouse run again, everything cached: wall time of the whole command
                (the re-submission target: nothing dispatched, under 1 s)
  cluster       with --cluster: a standalone coordinator and two workers (2 slots, a
                cache node each) on loopback; the plan (repository as a file:// URL) is
                submitted once untimed, then `gatehouse submit --watch --quiet` of the
                unchanged plan is timed --repeat times (the coordinator prepares it
                again, every gate is answered from the cluster's cache, nothing is
                dispatched)

Targets (issue: source-aware plans): prepare < 2 s, checkout < 1 s, warm run < 1 s.
It measures; the exit status is 0 whatever the targets say (non-zero only on errors).

  bench/sources.py [--gatehouse target/release/gatehouse] [--repeat 5] [--git-cache DIR]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def git(repo, *args, stdin=None):
    env = dict(os.environ, **GIT_ENV)
    return subprocess.run(
        ["git", *args], cwd=repo, input=stdin, env=env, check=True, capture_output=True
    ).stdout


def make_repo(repo, files, commits, items):
    """The repository, through one fast-import stream."""
    shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(repo)
    git(repo, "init", "--quiet", "-b", "main")
    out = []
    mark = 0
    when = 1767225600  # 2026-01-01

    def commit(ref, message, changes, parent=None):
        nonlocal mark, when
        mark += 1
        when += 60
        out.append(f"commit {ref}\nmark :{mark}\n")
        out.append(f"author Bench <bench@localhost> {when} +0000\n")
        out.append(f"committer Bench <bench@localhost> {when} +0000\n")
        msg = message.encode()
        out.append(f"data {len(msg)}\n{message}\n")
        if parent is not None:
            out.append(f"from :{parent}\n")
        for path, content in changes:
            data = content.encode()
            out.append(f"M 100644 inline {path}\ndata {len(data)}\n{content}\n")
        return mark

    path = lambda i: f"d{i % 100:02d}/f{i:05d}.txt"
    head = commit(
        "refs/heads/main",
        "base",
        [(path(i), f"file {i}\n") for i in range(files)],
    )
    for c in range(1, commits):
        changes = [(path((c * 7 + k * 997) % files), f"file edited by {c}.{k}\n") for k in range(5)]
        head = commit("refs/heads/main", f"main {c}", changes, head)
    below = head
    for i in range(1, items + 1):
        below = commit(
            f"refs/heads/stack/{i}",
            f"stack {i}",
            [(path(i * 131 % files), f"stack {i}\n")],
            below,
        )
    git(repo, "fast-import", "--quiet", stdin="".join(out).encode())
    git(repo, "checkout", "--quiet", "main")


def write_plan(path, items):
    lines = [
        "version: 1",
        "name: bench-sources",
        "source: { repo: repo, base: main }",
        "items:",
    ]
    for i in range(1, items + 1):
        deps = f"[s{i - 1}]" if i > 1 else "[]"
        lines += [
            f"  - id: s{i}",
            f"    ref: stack/{i}",
            f"    deps: {deps}",
            "    gates:",
            "      - { id: build, run: 'test -f d00/f00000.txt' }",
            "      - { id: test, run: 'true', inputs: ['d07/**'] }",
        ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run(gatehouse, out, plan, extra=()):
    env = dict(os.environ, RUST_LOG="info,gatehouse_worker=debug")
    started = time.monotonic()
    p = subprocess.run(
        [gatehouse, "run", "--quiet", *extra, plan],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    if p.returncode != 0:
        sys.exit(f"gatehouse run failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}")
    log = p.stderr

    def times(message):
        return [
            int(m.group(1)) / 1000
            for line in log.splitlines()
            if message in line
            for m in [re.search(r"elapsed_ms=(\d+)", line)]
            if m
        ]

    return elapsed, times("source prepared"), times("checked out"), p.stdout


def summary(name, values, target):
    values = sorted(values)
    med = statistics.median(values)
    verdict = "PASS" if med < target else "MISS"
    print(
        f"{name:<10} median {med:7.3f}s  min {values[0]:7.3f}s  max {values[-1]:7.3f}s"
        f"  n={len(values):<4} target < {target:g}s  {verdict}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gatehouse", default="target/release/gatehouse")
    ap.add_argument("--out", default="bench/out/sources")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--commits", type=int, default=1_000)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cluster", action="store_true", help="also time re-submissions to a cluster")
    ap.add_argument(
        "--git-cache",
        help="gatehouse run --git-cache (mirror and checkouts), e.g. on a tmpfs to take"
        " the disk out of the checkout time (default: <out>/.gatehouse/git)",
    )
    args = ap.parse_args()
    gatehouse = os.path.abspath(args.gatehouse)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    started = time.monotonic()
    make_repo(os.path.join(out, "repo"), args.files, args.commits, args.items)
    print(
        f"repository: {args.files} files, {args.commits} commits on main, a stack of"
        f" {args.items} branches ({time.monotonic() - started:.1f}s to make)"
    )
    write_plan(os.path.join(out, "plan.yaml"), args.items)
    shutil.rmtree(os.path.join(out, ".gatehouse"), ignore_errors=True)
    extra = ()
    if args.git_cache:
        shutil.rmtree(args.git_cache, ignore_errors=True)
        extra = ("--git-cache", args.git_cache)

    cold, cold_prepare, checkouts, _ = run(gatehouse, out, "plan.yaml", extra)
    print(f"cold run   {cold:7.3f}s  (fetch into an empty mirror, prepare, {len(checkouts)} checkouts and gates)")
    warm, prepares = [], list(cold_prepare[:0])
    for _ in range(args.repeat):
        elapsed, prepared, checked, stdout = run(gatehouse, out, "plan.yaml", extra)
        if checked:
            sys.exit(f"a warm run checked out {len(checked)} trees: something ran\n{stdout}")
        warm.append(elapsed)
        prepares += prepared
    summary("prepare", prepares, 2.0)
    summary("checkout", checkouts, 1.0)
    summary("warm run", warm, 1.0)
    if args.cluster:
        summary("cluster", cluster_resubmissions(gatehouse, out, args), 1.0)


def cluster_resubmissions(gatehouse, out, args):
    """Wall times of re-submitting the unchanged plan to a coordinator and two workers."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pathlib import Path

    from local_cluster import LocalCluster

    logs = Path(out) / "cluster"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    with open(os.path.join(out, "plan.yaml")) as f:
        text = f.read().replace("repo: repo,", f"repo: 'file://{os.path.join(out, 'repo')}',")
    with open(os.path.join(out, "plan-cluster.yaml"), "w") as f:
        f.write(text)
    workers = [
        ["--slots", "2", "--cache-listen", "127.0.0.1:0", "--git-cache", str(logs / f"git-w{i}")]
        for i in range(2)
    ]
    times = []
    with LocalCluster(Path(gatehouse), logs, workers) as c:
        submit = [gatehouse, "submit", "--watch", "--quiet", "--coordinator", c.url, "plan-cluster.yaml"]
        first = subprocess.run(submit, cwd=out, capture_output=True, text=True)
        if first.returncode != 0:
            sys.exit(f"cluster run failed:\n{first.stdout}\n{first.stderr[-4000:]}")
        time.sleep(1)  # the workers' cache writes land
        for _ in range(args.repeat):
            started = time.monotonic()
            p = subprocess.run(submit, cwd=out, capture_output=True, text=True)
            times.append(time.monotonic() - started)
            if p.returncode != 0 or "(100 cached)" not in p.stdout:
                sys.exit(f"a re-submission ran gates:\n{p.stdout}\n{p.stderr[-4000:]}")
    return times


if __name__ == "__main__":
    main()
