#!/usr/bin/env python3
"""High availability: failover time, and HA throughput against a standalone coordinator.

Failover: etcd (free loopback ports, temp data dir), three `gatehouse coordinator --etcd
URL --cluster bench-failover --lease-ttl TTL` replicas and one worker given all their
URLs run the 10,000-gate `true` DAG of compare.py, so the store holds a real plan. Then,
--failovers times: find the leader (the election key with the lowest create revision,
`etcdctl get --prefix --sort-by=CREATE`), `kill -9` it, and poll every 50 ms
`gatehouse plans --json --failover-timeout 0s --coordinator SURVIVORS` until it lists
the plan (a new leader serves, state restored); `etcdctl watch` on the election
timestamps the dead key's expiry and the new leader's proclamation. The killed replica
restarts on its port before the next round. Target: median < 2 x TTL.

Throughput: the same plan through a standalone coordinator (--state-dir) and through
the leader of three replicas on a fresh etcd (clients and workers given all URLs), each
with 2 workers x 1 slot; one warm-up round, then --repeat rounds, each running
`gatehouse submit --watch --quiet --no-cache` on both shapes in turn. Reports median
wall, gates/s, the ratio HA/standalone, and, from the `state store writes` line each
coordinator logs when its term ends (after SIGTERM), store transactions, operations
and bytes per gate submitted (warm-up included), plus etcd's own counters (/metrics).

Prints Markdown. Exits 0 whatever the numbers say; 1 on errors (a command failed, a
process died, a wait timed out), 2 for bad arguments or a missing binary. Every process
it starts is stopped before it exits. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (  # noqa: E402  (the generator, timer and report helpers are shared)
    BenchError, dag_plan, first_line, release_binary, run_main, run_timed)
from compare import machine_info as compare_machine_info  # noqa: E402
from cluster import vm_hwm_kib  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
POLL_INTERVAL = 0.05            # seconds between failover polls
TARGET_TTL_FACTOR = 2.0         # failover target: median < 2 x lease TTL
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
SUMMARY_RE = re.compile(r"gates: (\d+) total, (\d+) passed")
# etcd counters read from /metrics before and after the HA rounds (summed over labels).
ETCD_COUNTERS = {
    "etcd_server_proposals_committed_total": "raft proposals committed (every write request)",
    "etcd_mvcc_txn_total": "txns applied with more than one range/put/delete",
    "etcd_mvcc_put_total": "puts applied",
    "etcd_disk_wal_fsync_duration_seconds_count": "WAL fsyncs",
    "etcd_disk_backend_commit_duration_seconds_count": "backend (bbolt) commits",
}


# --------------------------------------------------------------------------- processes

@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path
    url: str = ""          # coordinators: http://127.0.0.1:PORT
    listen: str = ""       # coordinators: the bound address, reused on restart


class Procs:
    """Every process this script starts; stop_all() ends those still running.

    Processes are only ever signalled through their own Popen (by PID).
    """

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.counter = 0

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              pipe: bool = False) -> Child:
        self.counter += 1
        log = self.log_dir / f"{self.counter:02d}-{name}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else f,
                stderr=f if pipe else subprocess.STDOUT,
                env={**os.environ, **(env or {})})
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def kill9(self, child: Child) -> None:
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait()

    def stop(self, children: list[Child], timeout: float = 30) -> None:
        """SIGTERM to those still running, all at once; wait; SIGKILL after the timeout."""
        live = [c for c in children if c.proc.poll() is None]
        for c in live:
            c.proc.send_signal(signal.SIGTERM)
        for c in live:
            try:
                c.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()

    def stop_all(self) -> None:
        self.stop(list(reversed(self.children)))


def check_alive(child: Child) -> None:
    if child.proc.poll() is not None:
        raise BenchError(f"{child.name} exited with {child.proc.returncode}\n"
                         f"--- last lines of its log ---\n{tail(child.log)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = ANSI_RE.sub("", path.read_text(errors="replace"))
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(what: str, timeout: float, cond, watch: list[Child] = ()) -> None:
    """Polls cond() every 50 ms; fails if it times out or a watched process dies."""
    deadline = time.monotonic() + timeout
    while not cond():
        for child in watch:
            check_alive(child)
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- etcd

class Etcd:
    def __init__(self, procs: Procs, etcd_bin: str, etcdctl_bin: str, data_dir: Path,
                 name: str):
        client, peer = free_ports(2)
        self.url = f"http://127.0.0.1:{client}"
        self.etcdctl_bin = etcdctl_bin
        self.procs = procs
        peer_url = f"http://127.0.0.1:{peer}"
        self.child = procs.start(name, [
            etcd_bin, "--name", "b", "--data-dir", str(data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"b={peer_url}", "--log-level", "warn"])
        wait_for(f"etcd ({name}) to answer /health", 30, self.healthy, [self.child])

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def ctl(self, *args: str) -> str:
        r = subprocess.run([self.etcdctl_bin, "--endpoints", self.url, *args],
                           capture_output=True, text=True,
                           env={**os.environ, "ETCDCTL_API": "3"}, timeout=30)
        if r.returncode != 0:
            raise BenchError(f"etcdctl {' '.join(args)} exited with {r.returncode}: "
                             f"{r.stderr.strip()}")
        return r.stdout

    def candidates(self, prefix: str) -> list[tuple[str, int, str]]:
        """(key, create revision, value) under prefix, oldest first: [0] is the leader."""
        out = json.loads(self.ctl("get", "--prefix", prefix, "--sort-by=CREATE",
                                  "--order=ASCEND", "-w", "json"))
        return [(base64.b64decode(kv["key"]).decode(), int(kv["create_revision"]),
                 base64.b64decode(kv.get("value", "")).decode())
                for kv in out.get("kvs", [])]

    def metrics(self) -> dict[str, float]:
        """The ETCD_COUNTERS present in /metrics, each summed over its label sets."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
                text = r.read().decode(errors="replace")
        except OSError:
            return {}
        found: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in ETCD_COUNTERS:
                try:
                    found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
                except ValueError:
                    pass
        return found


@dataclass
class WatchEvent:
    t: float               # time.perf_counter() when the line was read
    kind: str              # "PUT" or "DELETE"
    key: str
    value: str


class ElectionWatch:
    """`etcdctl watch --prefix PREFIX -w json`, read by a thread that timestamps events."""

    def __init__(self, etcd: Etcd, prefix: str):
        self.events: list[WatchEvent] = []
        self.lock = threading.Lock()
        self.child = etcd.procs.start(
            "etcdctl-watch",
            [etcd.etcdctl_bin, "--endpoints", etcd.url, "watch", "--prefix", prefix,
             "-w", "json"],
            env={"ETCDCTL_API": "3"}, pipe=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for raw in self.child.proc.stdout:
            t = time.perf_counter()
            try:
                resp = json.loads(raw)
            except ValueError:
                continue
            for ev in resp.get("Events") or []:
                kv = ev.get("kv", {})
                with self.lock:
                    self.events.append(WatchEvent(
                        t, "DELETE" if ev.get("type") == 1 else "PUT",
                        base64.b64decode(kv.get("key", "")).decode(),
                        base64.b64decode(kv.get("value", "")).decode()))

    def since(self, t0: float) -> list[WatchEvent]:
        with self.lock:
            return [e for e in self.events if e.t >= t0]


# --------------------------------------------------------------------------- gatehouse

@dataclass
class Setup:
    gh: Path
    procs: Procs
    tmp: Path
    env: dict[str, str]           # coordinators' environment (RUST_LOG=info)
    coord_flags: list[str]        # --heartbeat-interval ... shared by every coordinator


def start_coordinator(s: Setup, name: str, extra: list[str], listen: str = "127.0.0.1:0",
                      ) -> Child:
    ready = s.tmp / f"{name}-{s.procs.counter + 1}.addr"
    child = s.procs.start(name, [str(s.gh), "coordinator", "--listen", listen,
                                 "--ready-file", str(ready), *s.coord_flags, *extra],
                          env=s.env)
    wait_for(f"{name}'s ready file", 30, ready.exists, [child])
    child.listen = ready.read_text().strip()
    child.url = "http://" + child.listen
    return child


def start_worker(s: Setup, wid: str, urls: list[str], slots: int) -> Child:
    ws = s.tmp / f"ws-{wid}"
    ws.mkdir(exist_ok=True)
    return s.procs.start(wid, [str(s.gh), "worker", "--coordinator", ",".join(urls),
                               "--id", wid, "--slots", str(slots), "--workspace", str(ws)])


def gh_json(gh: Path, cmd: str, urls: list[str], timeout: str = "0s") -> dict | None:
    """`gatehouse CMD --json --coordinator URLS --failover-timeout T`, parsed; None if it
    did not exit 0."""
    r = subprocess.run([str(gh), cmd, "--json", "--coordinator", ",".join(urls),
                        "--failover-timeout", timeout],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def worker_count(gh: Path, urls: list[str]) -> int:
    out = gh_json(gh, "workers", urls)
    return -1 if out is None else json.dumps(out).count('"worker_id"')


def lists_plans(out: dict | None, plan_ids: set[str]) -> bool:
    if out is None:
        return False
    listed = {p.get("plan_id") for p in out.get("plans", [])}
    return plan_ids <= listed


def submit(gh: Path, urls: list[str], plan: Path, size: int, log_dir: Path) -> float:
    sample = run_timed([str(gh), "submit", "--watch", "--quiet", "--no-cache",
                        "--coordinator", ",".join(urls), str(plan)], log_dir, log_dir)
    m = SUMMARY_RE.search(sample.output)
    if not m or int(m.group(1)) != size or int(m.group(2)) != size:
        raise BenchError(f"expected {size} gates to pass, the summary says: "
                         f"{sample.output.strip()[-300:]}")
    return sample.wall


def store_stats(log: Path) -> list[tuple[int, int, int]]:
    """Every `state store writes` line of a coordinator log (one per leadership term)."""
    out = []
    for line in ANSI_RE.sub("", log.read_text(errors="replace")).splitlines():
        if "state store writes" not in line:
            continue
        nums = {k: int(v) for k, v in re.findall(r"\b(transactions|operations|bytes)=(\d+)",
                                                  line)}
        if len(nums) == 3:
            out.append((nums["transactions"], nums["operations"], nums["bytes"]))
    return out


def log_problems(logs: list[Path]) -> list[str]:
    """WARN/ERROR lines of the logs, deduplicated by message (timestamps and numbers
    masked), with counts."""
    seen: dict[str, tuple[int, str]] = {}
    for log in logs:
        try:
            text = ANSI_RE.sub("", log.read_text(errors="replace"))
        except OSError:
            continue
        kind = re.sub(r"^\d+-|\.log$", "", log.name)
        kind = re.sub(r"-?\d+$", "", kind)
        for line in text.splitlines():
            # gatehouse (tracing), etcd (capnslog ` W | `, grpc `WARNING:`), panics.
            if not re.search(r"\b(WARN|ERROR)\b|^WARNING:|^ERROR:| [WE] \| |^error:|panicked",
                             line):
                continue
            msg = re.sub(r"^(\S*\d{4}-\d\d-\d\dT\S+|\d{4}-\d\d-\d\d [\d:.]+)\s+", "", line)
            msg = re.sub(r"^(WARNING|ERROR): \d{4}/\d\d/\d\d [\d:]+ ", r"\1: ", msg)
            key = kind + ": " + re.sub(r"\d+", "N", msg)
            n, example = seen.get(key, (0, msg))
            seen[key] = (n + 1, example)
    return [f"{n}× {key.split(':', 1)[0]}: `{example[:300]}`"
            for key, (n, example) in sorted(seen.items())]


# --------------------------------------------------------------------------- part 1

@dataclass
class Failover:
    killed: str
    new_leader: str
    expired: float | None     # kill -> etcd deleted the dead leader's key
    elected: float | None     # kill -> the new leader proclaimed (PUT on its key)
    serving: float            # kill -> `gatehouse plans` answered with the plan listed


@dataclass
class FailoverResult:
    rounds: list[Failover] = field(default_factory=list)
    first_plan_wall: float = 0.0
    client_latency: float = 0.0


def failover_part(args, s: Setup, plan: Path) -> FailoverResult:
    res = FailoverResult()
    etcd = Etcd(s.procs, args.etcd, args.etcdctl, s.tmp / "etcd-failover", "etcd-failover")
    prefix = "/gatehouse/bench-failover/election"
    watch = ElectionWatch(etcd, prefix)
    ha_flags = ["--etcd", etcd.url, "--cluster", "bench-failover", "--lease-ttl", args.lease_ttl]
    replicas = [start_coordinator(s, f"fo-c{i}", ha_flags) for i in range(3)]
    urls = [c.url for c in replicas]    # stable: a restarted replica gets its port back
    wait_for("3 replicas in the election", 30, lambda: len(etcd.candidates(prefix)) == 3, replicas)
    worker = start_worker(s, "fo-w0", urls, args.jobs)
    wait_for("the worker to connect", 30, lambda: worker_count(s.gh, urls) == 1, [worker])
    res.first_plan_wall = submit(s.gh, urls, plan, args.size, s.tmp)
    listed = gh_json(s.gh, "plans", urls)
    plan_ids = {p["plan_id"] for p in (listed or {}).get("plans", [])}
    if len(plan_ids) != 1:
        raise BenchError(f"expected one stored plan, `gatehouse plans` says: {listed}")
    print(f"[failover] {args.size:,}-gate plan done in {res.first_plan_wall:.3f} s",
          file=sys.stderr)

    leader_url = etcd.candidates(prefix)[0][2]
    lat = []
    for _ in range(5):
        t = time.perf_counter()
        if not lists_plans(gh_json(s.gh, "plans", [leader_url]), plan_ids):
            raise BenchError(f"the leader {leader_url} does not list the plan")
        lat.append(time.perf_counter() - t)
    res.client_latency = statistics.median(lat)

    deadline_s = max(60.0, 10 * args.ttl_s)
    for rnd in range(1, args.failovers + 1):
        cands = etcd.candidates(prefix)
        if len(cands) != 3:
            raise BenchError(f"expected 3 candidates before round {rnd}, etcd has {cands}")
        old_key, _, old_url = cands[0]
        idx = urls.index(old_url)
        victim = replicas[idx]
        survivors = [u for u in urls if u != old_url]
        t0 = time.perf_counter()
        s.procs.kill9(victim)
        next_tick = t0
        while True:
            now = time.perf_counter()
            if now < next_tick:
                time.sleep(next_tick - now)
            next_tick += POLL_INTERVAL
            if lists_plans(gh_json(s.gh, "plans", survivors), plan_ids):
                t1 = time.perf_counter()
                break
            if time.perf_counter() - t0 > deadline_s:
                raise BenchError(f"round {rnd}: no coordinator served the plans within "
                                 f"{deadline_s:g} s of killing the leader {old_url}")
        new = etcd.candidates(prefix)
        new_url = new[0][2] if new else "?"
        if new_url == old_url:
            raise BenchError(f"round {rnd}: etcd still names the killed {old_url} leader")
        events = watch.since(t0)
        expired = next((e.t - t0 for e in events if e.kind == "DELETE" and e.key == old_key),
                       None)
        elected = next((e.t - t0 for e in events if e.kind == "PUT" and e.key != old_key
                        and e.value == new_url), None)
        res.rounds.append(Failover(old_url, new_url, expired, elected, t1 - t0))
        print(f"[failover] round {rnd}/{args.failovers}: killed {old_url}, {new_url} "
              f"serving after {t1 - t0:.3f} s (key expired "
              f"{'?' if expired is None else f'{expired:.3f}'} s, proclaimed "
              f"{'?' if elected is None else f'{elected:.3f}'} s)", file=sys.stderr)
        # Restart the killed replica on its port, so the URL lists stay valid.
        replicas[idx] = start_coordinator(s, f"fo-c{idx}", ha_flags, listen=victim.listen)
        wait_for("the restarted replica to campaign", 30,
                 lambda: len(etcd.candidates(prefix)) == 3, [replicas[idx]])
        wait_for("the worker to reconnect", 60, lambda: worker_count(s.gh, urls) == 1,
                 [worker])
    # The worker, then every replica at once (so no follower starts a term of its own
    # while the others stop one by one), then the watch and etcd.
    s.procs.stop([worker])
    s.procs.stop(replicas)
    s.procs.stop_all()
    return res


# --------------------------------------------------------------------------- part 2

@dataclass
class StoreView:
    label: str
    transactions: int
    operations: int
    bytes: int
    terms: int
    gates: int
    hwm_kib: int


@dataclass
class ThroughputResult:
    walls: dict[str, list[float]] = field(default_factory=lambda: {"standalone": [], "ha": []})
    stores: list[StoreView] = field(default_factory=list)
    etcd_delta: dict[str, float] = field(default_factory=dict)
    leader_changed: bool = False


def throughput_part(args, s: Setup, plan: Path) -> ThroughputResult:
    res = ThroughputResult()
    etcd = Etcd(s.procs, args.etcd, args.etcdctl, s.tmp / "etcd-throughput", "etcd-throughput")
    prefix = "/gatehouse/bench-throughput/election"
    ha_flags = ["--etcd", etcd.url, "--cluster", "bench-throughput",
                "--lease-ttl", args.lease_ttl]
    replicas = [start_coordinator(s, f"ha-c{i}", ha_flags) for i in range(3)]
    ha_urls = [c.url for c in replicas]
    wait_for("3 replicas in the election", 30, lambda: len(etcd.candidates(prefix)) == 3,
             replicas)
    leader_url = etcd.candidates(prefix)[0][2]
    standalone = start_coordinator(s, "sa-c", ["--state-dir", str(s.tmp / "standalone-state")])
    sa_urls = [standalone.url]
    workers = [start_worker(s, f"sa-w{i}", sa_urls, 1) for i in range(2)]
    workers += [start_worker(s, f"ha-w{i}", ha_urls, 1) for i in range(2)]
    wait_for("2 workers on each shape", 30,
             lambda: worker_count(s.gh, sa_urls) == 2 and worker_count(s.gh, ha_urls) == 2,
             [*replicas, standalone, *workers])

    shapes = {"standalone": sa_urls, "ha": ha_urls}
    before = etcd.metrics()
    for rnd in range(args.repeat + 1):
        for name, urls in shapes.items():
            wall = submit(s.gh, urls, plan, args.size, s.tmp)
            if rnd > 0:
                res.walls[name].append(wall)
        label = "warm-up" if rnd == 0 else f"round {rnd}/{args.repeat}"
        print(f"[throughput] {label}: " + "  ".join(
            f"{k} {res.walls[k][-1]:.3f}s" if rnd else k for k in shapes), file=sys.stderr)
    after = etcd.metrics()
    res.etcd_delta = {k: after[k] - before.get(k, 0.0) for k in after}
    res.leader_changed = etcd.candidates(prefix)[0][2] != leader_url
    leader = next(c for c in replicas if c.url == leader_url)
    hwm = [vm_hwm_kib(standalone.proc.pid), vm_hwm_kib(leader.proc.pid)]

    # Stop workers, then the followers, then the leader (so no follower takes over and
    # starts a term of its own), then the standalone coordinator; then read the logs.
    s.procs.stop(workers)
    s.procs.stop([c for c in replicas if c is not leader])
    s.procs.stop([leader, standalone])
    submitted = (args.repeat + 1) * args.size
    for label, coords, peak in (("standalone (local store)", [standalone], hwm[0]),
                                ("HA leader (etcd)", replicas, hwm[1])):
        stats = [st for c in coords for st in store_stats(c.log)]
        if not stats:
            raise BenchError(f"{label}: no `state store writes` line in the coordinator log "
                             f"after SIGTERM\n{tail(coords[0].log)}")
        res.stores.append(StoreView(
            label, sum(x[0] for x in stats), sum(x[1] for x in stats),
            sum(x[2] for x in stats), len(stats), submitted, peak))
    s.procs.stop_all()
    return res


# --------------------------------------------------------------------------- report

def fs_of(path: Path) -> str:
    best, fstype = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if str(path).startswith(mnt.rstrip("/") + "/") or str(path) == mnt:
                if len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        pass
    return f"{fstype} (mounted on {best or '?'})"


def machine_info(args, gh: Path, tmp: Path) -> list[tuple[str, str]]:
    """compare.py's machine info without make and -j, plus etcd and the temp dir's fs."""
    rows = [(k, v) for k, v in compare_machine_info(gh, "true", 0)
            if not k.startswith(("make", "jobs"))]
    return rows[:-1] + [("etcd", f"{first_line([args.etcd, '--version'])} ({args.etcd})"),
                        ("etcd data dirs and local store", f"{tmp}: {fs_of(tmp)}"),
                        rows[-1]]


def fmt_opt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def print_report(args, info, fo: FailoverResult | None, tp: ThroughputResult | None,
                 notes: list[str]) -> None:
    print("# High availability (bench/ha.py)\n")
    print("## Machine\n")
    for k, v in info:
        print(f"- {k}: {v}")
    print()
    verdicts = []
    if fo is not None:
        ttl = args.ttl_s
        print(f"## Failover ({len(fo.rounds)} rounds, lease TTL {args.lease_ttl}, "
              f"3 replicas, 1 worker)\n")
        print(f"The store holds one finished {args.size:,}-gate plan (it ran in "
              f"{fo.first_plan_wall:.3f} s). Times are seconds from `kill -9` of the leader: "
              f"etcd deletes its election key (lease expired), the next candidate proclaims "
              f"itself, and `gatehouse plans` answers from it with the plan listed (polled "
              f"every {POLL_INTERVAL * 1000:.0f} ms; one such call takes "
              f"{fo.client_latency * 1000:.0f} ms against a healthy leader). After each "
              f"round the killed replica restarts on its old port (so the worker's and the "
              f"clients' URL lists stay valid) and joins the election again.\n")
        print("| round | killed leader | new leader | key expired (s) | proclaimed (s) "
              "| serving (s) |")
        print("| ---: | --- | --- | ---: | ---: | ---: |")
        for i, r in enumerate(fo.rounds, 1):
            print(f"| {i} | {r.killed} | {r.new_leader} | {fmt_opt(r.expired)} | "
                  f"{fmt_opt(r.elected)} | {r.serving:.3f} |")
        serving = [r.serving for r in fo.rounds]
        med = statistics.median(serving)
        print()
        for label, vals in (("key expired", [r.expired for r in fo.rounds]),
                            ("proclaimed", [r.elected for r in fo.rounds]),
                            ("serving", serving)):
            v = [x for x in vals if x is not None]
            if v:
                print(f"- {label}: median {statistics.median(v):.3f} s, "
                      f"min–max {min(v):.3f}–{max(v):.3f} s ({len(v)} rounds)")
        gaps = [r.serving - r.elected for r in fo.rounds if r.elected is not None]
        if gaps:
            print(f"- proclaimed → serving (load and restore the state, first answer): median "
                  f"{statistics.median(gaps):.3f} s, min–max {min(gaps):.3f}–{max(gaps):.3f} s")
        print()
        verdicts.append(("PASS" if med < TARGET_TTL_FACTOR * ttl else "MISS",
                         f"failover median under {TARGET_TTL_FACTOR:g} × TTL "
                         f"({TARGET_TTL_FACTOR * ttl:g} s): {med:.3f} s"))
    if tp is not None:
        print(f"## HA throughput against standalone ({args.size:,} gates of `true`, "
              f"2 workers × 1 slot each)\n")
        print(f"{args.repeat} timed rounds after 1 warm-up; each round runs standalone, then "
              f"HA. Both clusters stay up throughout; the idle one only exchanges heartbeats "
              f"and lease keep-alives.\n")
        print("| shape | median wall (s) | min–max (s) | gates/s |")
        print("| --- | ---: | ---: | ---: |")
        for name, label in (("standalone", "standalone coordinator, `--state-dir`"),
                            ("ha", "HA leader of 3 replicas, etcd")):
            w = tp.walls[name]
            m = statistics.median(w)
            print(f"| {label} | {m:.3f} | {min(w):.3f}–{max(w):.3f} | {args.size / m:,.0f} |")
        ratio = statistics.median(sa / ha for sa, ha in zip(tp.walls["standalone"],
                                                            tp.walls["ha"]))
        print(f"\nThroughput HA/standalone, median of the per-round ratios: **{ratio:.2f}**")
        if tp.leader_changed:
            print("\n**The HA leader changed during the rounds** (see the notes).")
        print(f"\n### State store writes (per gate submitted, warm-up included: "
              f"{args.repeat + 1} plans × {args.size:,} gates)\n")
        print("| coordinator | transactions | txns/gate | operations | ops/gate | bytes "
              "| bytes/gate | peak RSS (VmHWM) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for v in tp.stores:
            terms = "" if v.terms == 1 else f" ({v.terms} terms)"
            print(f"| {v.label}{terms} | {v.transactions:,} | {v.transactions / v.gates:.4f} | "
                  f"{v.operations:,} | {v.operations / v.gates:.2f} | {v.bytes:,} | "
                  f"{v.bytes / v.gates:.0f} | {v.hwm_kib / 1024:.1f} MiB |")
        print("\nFrom the `state store writes` line each coordinator logs at INFO when its "
              "term ends (here: SIGTERM after the last round); one transaction is one etcd "
              "txn (HA) or one local-store commit (standalone).")
        if tp.etcd_delta:
            gates = (args.repeat + 1) * args.size
            print(f"\n### etcd's own counters over the HA rounds (/metrics, after − before, "
                  f"{gates:,} gates)\n")
            print("| counter | meaning | delta | per gate |")
            print("| --- | --- | ---: | ---: |")
            for k, v in tp.etcd_delta.items():
                print(f"| `{k}` | {ETCD_COUNTERS[k]} | {v:,.0f} | {v / gates:.4f} |")
            print("\nThese include the replicas' own traffic over the same time (lease "
                  "keep-alives do not go through raft; reads are not counted).")
        print()
    print("## Commands\n")
    print("```")
    print(f"python3 bench/ha.py {shlex.join(args.argv)}".rstrip())
    print(f"etcd --name b --data-dir TMP/etcd-... --listen-client-urls http://127.0.0.1:P "
          f"--advertise-client-urls http://127.0.0.1:P --listen-peer-urls http://127.0.0.1:Q "
          f"--initial-advertise-peer-urls http://127.0.0.1:Q --initial-cluster "
          f"b=http://127.0.0.1:Q --log-level warn")
    ghr = str(args.gatehouse_path).replace(str(REPO) + "/", "")
    common = (f"--heartbeat-interval {args.heartbeat_interval} "
              f"--liveness-timeout {args.liveness_timeout}")
    print(f"RUST_LOG=info {ghr} coordinator --listen 127.0.0.1:0 --ready-file F {common} "
          f"--etcd http://127.0.0.1:P --cluster NAME --lease-ttl {args.lease_ttl}   # × 3")
    print(f"RUST_LOG=info {ghr} coordinator --listen 127.0.0.1:0 --ready-file F {common} "
          f"--state-dir TMP/standalone-state")
    print(f"{ghr} worker --coordinator URL[,URL,URL] --id ID --slots S --workspace TMP/ws-ID")
    print(f"ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:P get --prefix "
          f"/gatehouse/NAME/election --sort-by=CREATE --order=ASCEND   # leader = first")
    print("kill -9 LEADER_PID")
    print("# then the killed replica again, same flags, --listen 127.0.0.1:ITS_OLD_PORT")
    print(f"{ghr} plans --json --coordinator SURVIVOR_URL,SURVIVOR_URL --failover-timeout 0s"
          f"   # every {POLL_INTERVAL * 1000:.0f} ms")
    print(f"{ghr} submit --watch --quiet --no-cache --coordinator URL[,URL,URL] "
          f"bench/out/bench-{args.size}.yaml")
    print("```\n")
    if notes:
        print("## Notes (warnings and errors in the logs, and other remarks)\n")
        print("Log names: `fo-` failover part, `sa-` standalone and `ha-` HA shape of the "
              "throughput part; `-c` coordinators, `-w` workers.\n")
        for n in notes:
            print(f"- {n}")
        print()
    if verdicts:
        print("## Targets\n")
        for v, text in verdicts:
            print(f"- {v}: {text}")
        print()


# --------------------------------------------------------------------------- main

def parse_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Measure Gatehouse high availability: failover time after kill -9 of "
                    "the leader (3 replicas on etcd), and throughput of an HA leader against "
                    "a standalone coordinator, with state-store writes per gate. Prints "
                    "Markdown; exits 0 whatever the numbers say, non-zero only on errors.")
    p.add_argument("--size", type=int, default=10_000, help="gates in the plan (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="DAG seed (default 1)")
    p.add_argument("--lease-ttl", default="5s", help="replicas' --lease-ttl (default 5s)")
    p.add_argument("--heartbeat-interval", default="1s", help="coordinators' (default 1s)")
    p.add_argument("--liveness-timeout", default="5s", help="coordinators' (default 5s)")
    p.add_argument("--failovers", type=int, default=10,
                   help="failover rounds (default 10; 0 skips the failover part)")
    p.add_argument("--repeat", type=int, default=3,
                   help="timed throughput rounds after 1 warm-up (default 3; 0 skips the "
                        "throughput part)")
    p.add_argument("--jobs", type=int, default=2,
                   help="slots of the failover part's one worker (default 2)")
    p.add_argument("--gatehouse", type=Path, default=REPO / "target/release/gatehouse",
                   help="gatehouse binary (default: target/release/gatehouse in the repo)")
    p.add_argument("--etcd", default="etcd", help="etcd binary (default: etcd on PATH)")
    p.add_argument("--etcdctl", default="etcdctl", help="etcdctl binary (default: on PATH)")
    p.add_argument("--out", type=Path, default=REPO / "bench/out",
                   help="where the plan is written (default bench/out)")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the temp dir with every process's log and print its path")
    args = p.parse_args(argv)
    args.argv = argv
    try:
        args.ttl_s = parse_seconds(args.lease_ttl)
    except ValueError:
        p.error(f"--lease-ttl must look like 5s, got {args.lease_ttl!r}")
    if args.size < 1 or args.failovers < 0 or args.repeat < 0 or args.jobs < 1:
        p.error("--size and --jobs must be at least 1, --failovers and --repeat at least 0")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    gh = release_binary(args.gatehouse)
    args.gatehouse_path = gh
    for tool in ("etcd", "etcdctl"):
        path = getattr(args, tool)
        if shutil.which(path) is None:
            print(f"error: {tool} binary {path!r} not found", file=sys.stderr)
            return 2
    out = args.out.resolve()
    plan = dag_plan(out, f"bench-{args.size}", args.size, args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="gatehouse-ha-"))
    procs = Procs(tmp)
    setup = Setup(gh, procs, tmp, {"RUST_LOG": "info"},
                  ["--heartbeat-interval", args.heartbeat_interval,
                   "--liveness-timeout", args.liveness_timeout])
    try:
        fo = failover_part(args, setup, plan) if args.failovers else None
        tp = throughput_part(args, setup, plan) if args.repeat else None
    except BaseException:
        procs.stop_all()
        print(f"logs kept in {tmp}", file=sys.stderr)
        raise
    procs.stop_all()
    notes = log_problems([c.log for c in procs.children])
    info = machine_info(args, gh, tmp)
    if args.keep_logs:
        print(f"logs kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if tp is not None and tp.leader_changed:
        notes.append("the HA leader changed during the throughput rounds")
    print_report(args, info, fo, tp, notes)
    return 0


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    run_main(main)
