#!/usr/bin/env python3
"""What per-test results cost a cluster's state store, per plan.

Generates, under the output directory (default bench/out/reports, git-ignored), a JUnit
report of --tests passing test cases (default 100,000, about 10 MB), and runs one plan
of one gate that copies it into place, on a standalone coordinator (durable state in a
local store) with one worker, three ways:

  no-reports   the gate does not declare the report: the baseline
  reports      it declares it (`reports: [out/junit.xml]`): the executor reads it and
               the result carries the counts, which the plan's log keeps
  watched      the same, after a plan in which --failing of the tests failed: they are
               in the test history now, so the passing run reports their passes too
               and writes one history record

Each way runs on a fresh coordinator; the bytes are the ones the coordinator reports
writing to its state store when it stops (`state store writes ... bytes=N`, keys
excluded), for the whole plan (its record, its events, history records). The report's
own size and the plan's duration (submission to summary, reading the report included;
the gate's own duration is the copy alone) are printed alongside.

  bench/reports.py [--gatehouse target/release/gatehouse] [--tests 100000] [--failing 100]
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from local_cluster import LocalCluster  # noqa: E402


def write_report(path: Path, tests: int, failing: int) -> None:
    with open(path, "w") as out:
        out.write(f'<?xml version="1.0"?>\n<testsuites><testsuite name="suite" tests="{tests}">\n')
        for i in range(tests):
            out.write(f'  <testcase classname="pkg.module{i // 100}" name="test_{i}" time="0.001"')
            if i < failing:
                out.write('><failure message="assert 1 == 2">trace</failure></testcase>\n')
            else:
                out.write("/>\n")
        out.write("</testsuite></testsuites>\n")


def plan(name: str, report: Path, declared: bool) -> str:
    text = (f"version: 1\nname: {name}\npolicy:\n  cache: false\ngates:\n  - id: test\n"
            f"    run: mkdir -p out && cp {report} out/junit.xml\n")
    if declared:
        text += "    reports: [out/junit.xml]\n"
    return text


def submit(gh: Path, url: str, path: Path) -> dict:
    r = subprocess.run([str(gh), "submit", "--watch", "--json", "--coordinator", url, str(path)],
                       capture_output=True, text=True)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    ends = [l for l in lines if l.get("event") == "gate" and l.get("state") in
            ("passed", "failed")]
    summary = [l for l in lines if l.get("event") == "summary"]
    if not ends or not summary:
        raise SystemExit(f"no gate ended: {r.stdout}\n{r.stderr}")
    # The plan's duration includes reading the report (the gate's own does not).
    return {**ends[-1], "plan_ms": summary[-1]["duration_ms"]}


def measure(gh: Path, out: Path, way: str, plans: list[Path]) -> tuple[int, dict]:
    logs = out / way
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    work = out / "work"
    with LocalCluster(gh, logs, [["--workspace", str(work)]],
                      global_args=["--log-level", "info", "--log-format", "json"]) as c:
        for p in plans:
            end = submit(gh, c.url, p)
    text = (logs / "coordinator.log").read_text()
    writes = [json.loads(l) for l in text.splitlines()
              if l.startswith("{") and "state store writes" in l]
    if not writes:
        raise SystemExit(f"no 'state store writes' line in {logs / 'coordinator.log'}")
    fields = writes[-1].get("fields", writes[-1])
    return int(fields["bytes"]), end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gatehouse", default="target/release/gatehouse")
    ap.add_argument("--tests", type=int, default=100_000)
    ap.add_argument("--failing", type=int, default=100)
    ap.add_argument("--out", default="bench/out/reports")
    args = ap.parse_args()
    gh = Path(args.gatehouse).resolve()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "work").mkdir(exist_ok=True)
    passing = out / "passing.xml"
    failing = out / "failing.xml"
    write_report(passing, args.tests, 0)
    write_report(failing, args.tests, args.failing)
    plans = out / "plans"
    plans.mkdir(exist_ok=True)
    p_plain = plans / "plain.yaml"
    p_plain.write_text(plan("plain", passing, False))
    p_reports = plans / "reports.yaml"
    p_reports.write_text(plan("reports", passing, True))
    p_fail = plans / "fail.yaml"
    p_fail.write_text(plan("fail", failing, True))

    print(f"report: {args.tests} test cases, {passing.stat().st_size / 2**20:.1f} MiB")
    base, end = measure(gh, out, "no-reports", [p_plain])
    print(f"{'no-reports':<12} state store {base:>9} bytes   plan {end['plan_ms']} ms")
    with_reports, end = measure(gh, out, "reports", [p_reports])
    print(f"{'reports':<12} state store {with_reports:>9} bytes   plan {end['plan_ms']} ms"
          f"   (+{with_reports - base} bytes)")
    # The failing plan first (its gate fails), then the passing one: measured together,
    # so the failing plan alone is measured too and subtracted.
    failing_only, _ = measure(gh, out, "failing-only", [p_fail])
    both, end = measure(gh, out, "watched", [p_fail, p_reports])
    watched = both - failing_only
    print(f"{'watched':<12} state store {watched:>9} bytes   plan {end['plan_ms']} ms"
          f"   (+{watched - base} bytes; {args.failing} watched tests)")
    print(f"(the failing plan itself: {failing_only} bytes, {args.failing} failures recorded)")


if __name__ == "__main__":
    main()
