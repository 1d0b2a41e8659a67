#!/usr/bin/env python3
"""Compare `gatehouse run` with `make -j` on seeded layered DAGs of trivial gates.

For every size (default 1,000 and 10,000 gates) this script writes, under the output
directory (default bench/out/, git-ignored):

  bench-<N>.yaml    a flat-form Gatehouse plan: every gate runs `true` and needs 1-3
                    random gates of the previous layer
  bench-<N>.mk      the equivalent Makefile: one .PHONY target per gate, recipe `@true`,
                    prerequisites = needs, `all` depends on every gate

and then times, with the same parallelism N and alternating the commands in each round:

  make       make -j N -f bench-<N>.mk all
  uncached   gatehouse run --no-cache -j N --quiet bench-<N>.yaml
  cached     gatehouse run -j N --quiet --cache-dir cache-<N> bench-<N>.yaml
             (the cache dir is emptied, then filled by one untimed run, so every timed
             run finds all gates cached)
  cached-distinct
             the same on bench-<N>-distinct.yaml (cache dir cache-<N>-distinct): the plan
             plus `env: { BENCH_GATE: <id> }` per gate. A gate's id is not part of its
             cache key, so in bench-<N>.yaml every gate of a layer shares one entry (one
             entry per layer); here every gate has its own, as in a real plan. The cached
             target is checked on this one.

One warm-up round, then --repeat timed rounds. It reports min/median/max wall seconds,
the median of the per-round ratios gatehouse/make, and the peak RSS of the gatehouse
process (ru_maxrss from os.wait4: the largest of the process and its reaped children,
i.e. gatehouse itself, since its children are `sh -c true`).

With `--baseline PATH` (a second gatehouse binary, e.g. built before a change) every
round also runs each gatehouse command with that binary, right after the candidate's
(before it in the warm-up and every even round), with cache dirs of its own
(cache-<N>-baseline, cache-<N>-distinct-baseline); the report then adds both binaries'
versions and, per command, the baseline's median, min-max and peak RSS next to the
candidate's and the median of the per-round ratios candidate/baseline. The other tables
and the targets stay the candidate's.

It measures; it does not gate: the targets are printed as PASS/MISS and the exit status
is 0 whatever they say. It exits non-zero only on errors (a command that did not exit 0,
a missing binary, bad arguments).

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GATEHOUSE = REPO_ROOT / "target" / "release" / "gatehouse"
DEFAULT_OUT = REPO_ROOT / "bench" / "out"

# Targets from the issue.
TARGET_UNCACHED_RATIO = 1.5      # uncached gatehouse wall <= 1.5 x make -j wall
TARGET_CACHED_SECONDS = 1.0      # fully cached 10,000-gate run under 1 s
TARGET_RSS_BYTES = 100 * 10**6   # gatehouse peak RSS under 100 MB (decimal) at 10,000 gates
TARGET_SIZE = 10_000             # the size the cached and RSS targets are about

# Measured series, in the order they run within a round and appear in the table.
LABELS = {
    "make": "make -j",
    "uncached": "gatehouse --no-cache",
    "cached": "gatehouse, all cached (1 entry per layer)",
    "cached-distinct": "gatehouse, all cached (1 entry per gate)",
}

# A baseline binary's series are named after the candidate's, plus this suffix.
BASELINE = "-baseline"

SUMMARY_RE = re.compile(r"gates: (\d+) total, (\d+) passed(?: \((\d+) cached\))?")


class BenchError(Exception):
    """A failure that makes the measurement invalid; reported, then exit 1."""


class BenchUsage(BenchError):
    """Something to do before the benchmark can run (build, install); exit 2."""


def release_binary(path: Path) -> Path:
    """The gatehouse binary at `path`, resolved; BenchUsage if it is not built."""
    gh = path.resolve()
    if not gh.is_file() or not os.access(gh, os.X_OK):
        raise BenchUsage(f"{gh} not found; run `cargo build --release -p gatehouse-cli` first")
    return gh


def baseline_binary(p: argparse.ArgumentParser, path: Path | None) -> Path | None:
    """`--baseline PATH` resolved, or None without it; a usage error (exit 2) when PATH
    is not an executable file."""
    if path is None:
        return None
    bl = path.resolve()
    if not bl.exists():
        p.error(f"--baseline {path}: no such file")
    if not bl.is_file() or not os.access(bl, os.X_OK):
        p.error(f"--baseline {path}: not an executable file")
    return bl


def sha256_prefix(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256: two builds of one version print the
    same `--version`, this tells them apart."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def print_binaries(gh: Path, baseline: Path) -> None:
    """Markdown list items naming the candidate and the baseline binary."""
    sums = {b: sha256_prefix(b) for b in (gh, baseline)}
    for role, flag, b in (("candidate", "--gatehouse", gh), ("baseline", "--baseline", baseline)):
        print(f"- {role} (`{flag}`): {first_line([str(b), '--version'])} "
              f"({b}, sha256 {sums[b]})")
    if sums[gh] == sums[baseline]:
        print("- the two files are identical: the ratios show this machine's noise")


def dag_plan(out: Path, name: str, size: int, seed: int, distinct: bool = False) -> Path:
    """Writes the seeded `size`-gate DAG as `out/NAME.yaml` (plan name NAME)."""
    out.mkdir(parents=True, exist_ok=True)
    plan = out / f"{name}.yaml"
    write_plan(plan, name, gate_ids(size), generate_dag(size, default_layers(size), seed),
               distinct=distinct)
    return plan


def run_main(main) -> None:
    """The scripts' entry: main(argv)'s status; BenchUsage exits 2, BenchError 1, ^C 130."""
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchUsage as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


# --------------------------------------------------------------------------- DAGs

def default_layers(size: int) -> int:
    """20 layers up to 1,000 gates, 50 above (the shapes named in the issue)."""
    return 20 if size <= 1000 else 50


def generate_dag(size: int, layers: int, seed: int) -> list[list[int]]:
    """needs[i] for gates 0..size-1, split into `layers` near-equal consecutive layers.

    Every gate outside the first layer needs 1-3 distinct random gates of the layer
    just before it. Deterministic for a given (size, layers, seed).
    """
    if size < 1:
        raise BenchError(f"size must be at least 1, got {size}")
    layers = max(1, min(layers, size))
    rng = random.Random(f"{seed}:{size}:{layers}")
    bounds = [size * k // layers for k in range(layers + 1)]
    needs: list[list[int]] = []
    for k in range(layers):
        for _ in range(bounds[k], bounds[k + 1]):
            if k == 0:
                needs.append([])
                continue
            prev = range(bounds[k - 1], bounds[k])
            count = rng.randint(1, min(3, len(prev)))
            needs.append(sorted(rng.sample(prev, count)))
    return needs


def gate_ids(size: int) -> list[str]:
    width = max(5, len(str(size - 1)))
    return [f"g{i:0{width}d}" for i in range(size)]


def write_plan(path: Path, name: str, ids: list[str], needs: list[list[int]],
               distinct: bool = False) -> None:
    """The plan; with `distinct`, every gate also gets `env: { BENCH_GATE: <id> }`.

    A gate's id is not part of its cache key: gates whose `run`, `env` and dependency
    keys are equal share one cache entry, so in the plain plan every gate of a layer has
    the same key (one entry per layer). The env var makes every key distinct, so a cached
    run reads one entry per gate.
    """
    lines = ["version: 1", f"name: {name}", "gates:"]
    for gid, deps in zip(ids, needs):
        lines.append(f"  - id: {gid}")
        lines.append('    run: "true"')
        if distinct:
            lines.append(f"    env: {{ BENCH_GATE: {gid} }}")
        if deps:
            lines.append(f"    needs: [{', '.join(ids[d] for d in deps)}]")
    path.write_text("\n".join(lines) + "\n")


def write_makefile(path: Path, ids: list[str], needs: list[list[int]]) -> None:
    lines = [
        "# Generated by bench/compare.py: the same DAG as the plan of the same size.",
        "# No target is a file; every recipe is `@true` (make execs it without a shell).",
        "MAKEFLAGS += --no-builtin-rules",
        ".SUFFIXES:",
        ".PHONY: all",
    ]
    # .PHONY may be given many times; keep lines short.
    for start in range(0, len(ids), 50):
        lines.append(".PHONY: " + " ".join(ids[start:start + 50]))
    lines.append("all: \\")
    for start in range(0, len(ids), 50):
        tail = " \\" if start + 50 < len(ids) else ""
        lines.append("  " + " ".join(ids[start:start + 50]) + tail)
    for gid, deps in zip(ids, needs):
        lines.append(f"{gid}: {' '.join(ids[d] for d in deps)}".rstrip())
        lines.append("\t@true")
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- timing

@dataclass
class Sample:
    wall: float          # seconds
    maxrss_kib: int      # ru_maxrss of the child (KiB on Linux)
    output: str          # stdout+stderr of the child


@dataclass
class Series:
    size: int
    label: str
    argv: list[str]
    samples: list[Sample] = field(default_factory=list)

    @property
    def walls(self) -> list[float]:
        return [s.wall for s in self.samples]

    @property
    def peak_rss_bytes(self) -> int:
        return max(s.maxrss_kib for s in self.samples) * 1024


def run_timed(argv: list[str], cwd: Path, log_dir: Path,
              env: dict[str, str] | None = None) -> Sample:
    """Runs argv to completion (in `env`, default this process's environment); wall time
    from just before fork to just after wait4."""
    with tempfile.TemporaryFile(dir=log_dir) as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped by wait4
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-20:])
        raise BenchError(
            f"command exited with {proc.returncode}: {shlex.join(argv)}\n"
            f"--- last lines of its output ---\n{tail}")
    return Sample(wall=wall, maxrss_kib=rusage.ru_maxrss, output=text)


def alternate_samples(cmds: dict[str, list[str]], repeat: int, cwd: Path, log_dir: Path,
                      envs: dict[str, dict[str, str]] | None = None, check=None,
                      progress=None, pairs: dict[str, str] | None = None
                      ) -> dict[str, list[Sample]]:
    """Runs every command once as a warm-up, then `repeat` rounds with the commands
    alternating in the order of `cmds`; returns each command's timed samples.

    `check(name, round, sample)` (round 0 = warm-up) may raise BenchError.
    `progress(round, samples)` reports each finished round; by default one line on stderr
    with each command's last wall time.
    `pairs` maps a command to its partner, the same command run by a baseline binary and
    listed right after it: in the warm-up and every even round the partner goes first, so
    neither binary always runs right after the same command.
    """
    samples: dict[str, list[Sample]] = {k: [] for k in cmds}
    for rnd in range(repeat + 1):
        order = list(cmds)
        if pairs and rnd % 2 == 0:
            for a, b in pairs.items():
                i, j = order.index(a), order.index(b)
                order[i], order[j] = order[j], order[i]
        for name in order:
            s = run_timed(cmds[name], cwd, log_dir, env=(envs or {}).get(name))
            if check:
                check(name, rnd, s)
            if rnd > 0:
                samples[name].append(s)
        if progress:
            progress(rnd, samples)
            continue
        label = "warm-up" if rnd == 0 else f"round {rnd}/{repeat}"
        print(f"[{label}] " + "  ".join(
            f"{k} {samples[k][-1].wall if rnd else 0:.3f}s" for k in cmds), file=sys.stderr)
    return samples


def alternate(cmds: dict[str, list[str]], repeat: int, cwd: Path, log_dir: Path,
              envs: dict[str, dict[str, str]] | None = None,
              check=None) -> dict[str, list[float]]:
    """`alternate_samples`, returning each command's timed walls only."""
    return {k: [s.wall for s in v]
            for k, v in alternate_samples(cmds, repeat, cwd, log_dir, envs, check).items()}


def print_walls(walls: dict[str, list[float]], repeat: int) -> None:
    """The machine, the rounds and a Markdown table of each command's median wall."""
    print(f"- machine: nproc {os.cpu_count()}, {os.uname().release}")
    print(f"- {repeat} timed rounds after 1 warm-up, the {len(walls)} commands alternating\n")
    print("| command | median wall (s) | min–max (s) |")
    print("| --- | ---: | ---: |")
    for name, w in walls.items():
        print(f"| {name} | {statistics.median(w):.3f} | {min(w):.3f}–{max(w):.3f} |")


def round_ratio(walls: dict[str, list[float]], a: str, b: str) -> float:
    """The median of the per-round ratios a/b."""
    return statistics.median([x / y for x, y in zip(walls[a], walls[b])])


def ratio_spread(a: list[float], b: list[float]) -> str:
    """The median of the per-round ratios a/b, then their min–max."""
    r = [x / y for x, y in zip(a, b)]
    return f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})"


def cached_count(output: str) -> tuple[int, int] | None:
    """(total, cached) from gatehouse's summary line, or None if it is not there."""
    m = SUMMARY_RE.search(output)
    if not m:
        return None
    return int(m.group(1)), int(m.group(3) or 0)


# --------------------------------------------------------------------------- reporting

def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as e:
        return f"unavailable ({e})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine_info(gatehouse: Path, make: str, jobs: int,
                 baseline: Path | None = None) -> list[tuple[str, str]]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        ("nproc", first_line(["nproc"])),
        ("cpu", cpu_model),
        ("kernel (uname -r)", os.uname().release),
        ("make", first_line([make, "--version"])),
        ("gatehouse", f"{first_line([str(gatehouse), '--version'])} ({gatehouse})"),
        *([("gatehouse baseline", f"{first_line([str(baseline), '--version'])} ({baseline})")]
          if baseline else []),
        ("python", sys.version.split()[0]),
        ("jobs (-j)", str(jobs)),
        ("load average at the end (1/5/15 min)", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


def fmt_s(x: float) -> str:
    return f"{x:.3f}"


def fmt_mb(b: int) -> str:
    return f"{b / 10**6:.1f} MB"


def ratio_medians(series: Series, make: Series) -> float:
    return statistics.median(g / m for g, m in zip(series.walls, make.walls))


def print_report(results: dict[int, dict[str, Series]], info, cmds, args, notes) -> None:
    print()
    print("## Machine")
    print()
    for k, v in info:
        print(f"- {k}: {v}")
    print()
    print(f"## Results ({args.repeat} timed rounds after 1 warm-up, commands alternating)")
    print()
    if args.baseline:
        print("The candidate (`--gatehouse`); the baseline is in the next section.")
        print()
    print("| gates | command | median wall (s) | min–max (s) | peak RSS | ratio vs make (median) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for size, by in results.items():
        make = by["make"]
        for label, name in LABELS.items():
            s = by[label]
            w = s.walls
            rss = "—" if label == "make" else fmt_mb(s.peak_rss_bytes)
            ratio = "1.00" if label == "make" else f"{ratio_medians(s, make):.2f}"
            print(f"| {size:,} | {name} | {fmt_s(statistics.median(w))} | "
                  f"{fmt_s(min(w))}–{fmt_s(max(w))} | {rss} | {ratio} |")
    print()
    print("Peak RSS is ru_maxrss of the gatehouse process (os.wait4), max over its runs;")
    print("make's is not shown (its recipes are tiny and make's own RSS is not the question).")
    print()
    if args.baseline:
        print_baseline(results, args.gatehouse.resolve(), args.baseline)
    print("## Commands (cwd: output dir; N = jobs)")
    print()
    print("```")
    for c in cmds:
        print(c)
    print("```")
    if notes:
        print()
        print("## Notes")
        print()
        for n in notes:
            print(f"- {n}")
    print()
    print("## Targets")
    print()
    if args.baseline:
        print("Checked on the candidate.")
        print()
    for verdict, text in check_targets(results):
        print(f"- {verdict}: {text}")
    print()


def print_baseline(results: dict[int, dict[str, Series]], gh: Path, baseline: Path) -> None:
    """The candidate's figures next to the baseline's, and the per-round ratios."""
    print("## Candidate against baseline")
    print()
    print_binaries(gh, baseline)
    print("- every round runs each gatehouse command with both binaries, one right after "
          "the other (the baseline first in the warm-up and every even round), make in the "
          "same rounds; each binary fills and reads its own cache dirs")
    print()
    print("| gates | command | candidate median (s) | min–max (s) | peak RSS | "
          "baseline median (s) | min–max (s) | peak RSS | candidate/baseline |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, by in results.items():
        for label, name in LABELS.items():
            if label == "make":
                continue
            c, b = by[label], by[label + BASELINE]
            print(f"| {size:,} | {name} | " + " | ".join(
                f"{fmt_s(statistics.median(s.walls))} | "
                f"{fmt_s(min(s.walls))}–{fmt_s(max(s.walls))} | {fmt_mb(s.peak_rss_bytes)}"
                for s in (c, b)) + f" | {ratio_spread(c.walls, b.walls)} |")
    print()
    print("candidate/baseline: the median of the per-round ratios of wall times, then their")
    print("min–max; below 1.00 the candidate was faster. Peak RSS as above, for each binary.")
    print()


def check_targets(results: dict[int, dict[str, Series]]) -> list[tuple[str, str]]:
    out = []
    for size, by in results.items():
        r = ratio_medians(by["uncached"], by["make"])
        out.append(("PASS" if r <= TARGET_UNCACHED_RATIO else "MISS",
                    f"{size:,} gates, uncached within {TARGET_UNCACHED_RATIO}x of make -j: "
                    f"median ratio {r:.2f}x"))
    big = results.get(TARGET_SIZE)
    if big is None:
        out.append(("MISS", f"fully cached {TARGET_SIZE:,}-gate run under "
                            f"{TARGET_CACHED_SECONDS:g} s: not measured (size not in --sizes)"))
        out.append(("MISS", f"peak RSS under 100 MB at {TARGET_SIZE:,} gates: not measured"))
        return out
    med = statistics.median(big["cached-distinct"].walls)
    shared = statistics.median(big["cached"].walls)
    out.append(("PASS" if med < TARGET_CACHED_SECONDS else "MISS",
                f"fully cached {TARGET_SIZE:,}-gate run under {TARGET_CACHED_SECONDS:g} s: "
                f"median {med:.3f} s with one cache entry per gate "
                f"({shared:.3f} s with one entry per layer)"))
    rss = max(big[label].peak_rss_bytes for label in LABELS if label != "make")
    out.append(("PASS" if rss < TARGET_RSS_BYTES else "MISS",
                f"gatehouse peak RSS under 100 MB at {TARGET_SIZE:,} gates: "
                f"{fmt_mb(rss)} ({rss / 2**20:.1f} MiB), max over all its runs"))
    return out


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time `gatehouse run` against `make -j` on seeded layered DAGs of "
                    "`true` gates (uncached and fully cached), report a Markdown table "
                    "and PASS/MISS for the performance targets. Exits 0 whatever the "
                    "targets say; non-zero only on errors.")
    p.add_argument("--sizes", default="1000,10000",
                   help="comma-separated gate counts (default: %(default)s)")
    p.add_argument("--layers", default=None,
                   help="layers per size: one number for all sizes, or a comma-separated "
                        "list matching --sizes (default: 20 up to 1,000 gates, else 50)")
    p.add_argument("--seed", type=int, default=1, help="DAG seed (default: %(default)s)")
    p.add_argument("--jobs", "-j", type=int, default=len(os.sched_getaffinity(0)),
                   help="parallelism for both make and gatehouse (default: CPUs, %(default)s)")
    p.add_argument("--repeat", type=int, default=5,
                   help="timed rounds after one warm-up round (default: %(default)s)")
    p.add_argument("--gatehouse", type=Path, default=DEFAULT_GATEHOUSE,
                   help="gatehouse binary (default: target/release/gatehouse in the repo)")
    p.add_argument("--baseline", type=Path, default=None, metavar="PATH",
                   help="a second gatehouse binary (e.g. built before a change): every "
                        "round also runs each gatehouse command with it, and the report "
                        "puts its figures next to --gatehouse's, with the per-round ratios")
    p.add_argument("--make", default="make", help="make binary (default: %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="where plans, Makefiles and caches go (default: bench/out)")
    p.add_argument("--generate-only", action="store_true",
                   help="write the plans and Makefiles, time nothing")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        p.error("--sizes needs at least one size, each at least 1")
    if args.layers is None:
        args.layers = [default_layers(s) for s in args.sizes]
    else:
        try:
            layers = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError:
            p.error(f"--layers must be integers, got {args.layers!r}")
        if len(layers) == 1:
            layers = layers * len(args.sizes)
        if len(layers) != len(args.sizes) or min(layers) < 1:
            p.error("--layers needs one value, or one per size, each at least 1")
        args.layers = layers
    if args.jobs < 1 or args.repeat < 1:
        p.error("--jobs and --repeat must be at least 1")
    args.baseline = None if args.generate_only else baseline_binary(p, args.baseline)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    gh = args.gatehouse.resolve()
    if not args.generate_only:
        if not gh.is_file() or not os.access(gh, os.X_OK):
            print(f"error: gatehouse binary not found at {gh}\n"
                  f"build it first: (cd {REPO_ROOT} && cargo build --release -p gatehouse-cli), "
                  f"or pass --gatehouse PATH", file=sys.stderr)
            return 2
        if shutil.which(args.make) is None:
            print(f"error: {args.make!r} not found on PATH", file=sys.stderr)
            return 2

    n = args.jobs
    plans = []
    for size, layers in zip(args.sizes, args.layers):
        ids = gate_ids(size)
        needs = generate_dag(size, layers, args.seed)
        plan, mk = out / f"bench-{size}.yaml", out / f"bench-{size}.mk"
        write_plan(plan, f"bench-{size}", ids, needs)
        write_plan(out / f"bench-{size}-distinct.yaml", f"bench-{size}-distinct", ids, needs,
                   distinct=True)
        write_makefile(mk, ids, needs)
        edges = sum(len(d) for d in needs)
        print(f"wrote {plan.name} and {mk.name}: {size} gates, {min(layers, size)} layers, "
              f"{edges} edges (seed {args.seed})", file=sys.stderr)
        plans.append((size, plan, mk))
    if args.generate_only:
        return 0

    results: dict[int, dict[str, Series]] = {}
    notes: list[str] = []
    binaries = {"": gh, **({BASELINE: args.baseline} if args.baseline else {})}
    cmds = [f"{args.make} -j {n} -f bench-SIZE.mk all"]
    for suffix, binary in binaries.items():
        if suffix:
            cmds.append("# the baseline (--baseline), in the same rounds, with its own cache dirs")
        cmds += [
            f"{binary} run --no-cache -j {n} --quiet bench-SIZE.yaml",
            f"{binary} run -j {n} --quiet --cache-dir cache-SIZE{suffix} bench-SIZE.yaml",
            f"{binary} run -j {n} --quiet --cache-dir cache-SIZE-distinct{suffix} "
            f"bench-SIZE-distinct.yaml",
        ]
    cmds.append("# each cache dir is emptied and filled by one untimed run of its command first")
    for size, plan, mk in plans:
        # make, then each gatehouse command with the candidate and right after it with
        # the baseline; each binary has its own cache dirs.
        series = {"make": Series(size, "make", [args.make, "-j", str(n), "-f", mk.name, "all"])}
        for label, cache_dir, plan_name in (
                ("uncached", None, plan.name),
                ("cached", f"cache-{size}", plan.name),
                ("cached-distinct", f"cache-{size}-distinct", f"bench-{size}-distinct.yaml")):
            for suffix, binary in binaries.items():
                argv = [str(binary), "run", "-j", str(n), "--quiet"]
                argv += ["--no-cache"] if cache_dir is None else ["--cache-dir", cache_dir + suffix]
                series[label + suffix] = Series(size, label + suffix, argv + [plan_name])
        for label, s in series.items():
            if not label.startswith("cached"):
                continue
            cache_dir = out / s.argv[-2]
            shutil.rmtree(cache_dir, ignore_errors=True)
            fill = run_timed(s.argv, out, out)
            entries = sum(1 for p in cache_dir.rglob("*") if p.is_file())
            print(f"[{size}] filled {cache_dir.name} in {fill.wall:.3f} s: "
                  f"{entries} files", file=sys.stderr)
            notes.append(f"{size:,} gates: {cache_dir.name} holds {entries} files after the "
                         f"untimed fill run")

        def check_cached(label: str, rnd: int, s: Sample) -> None:
            if label.startswith("cached"):
                counts = cached_count(s.output)
                if counts is not None and counts[1] != size:
                    notes.append(f"{size:,} gates, {label}: a timed run reported "
                                 f"{counts[1]} of {counts[0]} gates cached")
                elif counts is None and rnd == 0:
                    notes.append(f"{size:,} gates, {label}: could not read the cached "
                                 f"count from gatehouse's summary line")

        def progress(rnd: int, samples: dict[str, list[Sample]]) -> None:
            tag = "warm-up" if rnd == 0 else f"round {rnd}/{args.repeat}"
            print(f"[{size}] {tag}: " + "  ".join(
                label if rnd == 0 else f"{label} {samples[label][-1].wall:.3f}s"
                for label in samples), file=sys.stderr)

        samples = alternate_samples(
            {label: s.argv for label, s in series.items()}, args.repeat, out, out,
            check=check_cached, progress=progress,
            pairs={label: label + BASELINE for label in LABELS if label != "make"}
            if args.baseline else None)
        for label, s in series.items():
            s.samples = samples[label]
        results[size] = series

    print_report(results, machine_info(gh, args.make, n, args.baseline), cmds, args,
                 list(dict.fromkeys(notes)))
    return 0


if __name__ == "__main__":
    run_main(main)
