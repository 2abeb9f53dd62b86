"""The side-by-side benchmark: streamwatch against the ceiling, Quix Streams and faust.

    scripts/bench.sh                      # installs the benchmark extras, then:
    .venv/bin/python -m tests.benchmarks.bench --events 1000000 --runs 3 --write BENCHMARKS.md

One embedded Tansu broker; the datasets (`tests.benchmarks.dataset`) are
produced into it first, untimed. Then every contender reads the same topics
from the start, one after another, each in a fresh process with a consumer
group of its own, `--runs` times over (interleaved: run 1 of every contender,
then run 2, ...), so a slow moment of the machine hits all of them alike.
Medians are reported with min and max.

Per contender: events/s (from its first message to its last result out),
CPU seconds per million events (all threads of the process, same interval),
peak resident memory (the kernel's high-water mark for the whole process),
the broker's CPU over the same time, and for streamwatch the delay from a
window's close to its row in ClickHouse and to its alert's acknowledgement
on the alert topic (p50, p99 over every row and alert of the run).

Then, streamwatch alone: resident memory after each million events of a
5x longer CTR run at the same key count, and scaling with partitions,
workers and keys.

`--set quality` runs another list instead (issue 15, point 7: the quality
monitor's cost end to end): inference logs with their labels (the `quality`
dataset, `--events` messages) read by the ceiling and by streamwatch drift +
service + quality, next to the same inference logs without the labels (a
`drift` dataset of the same event time) read by the ceiling and by streamwatch
drift + service (quality off); no memory or scaling runs. Its tables go between the
`<!-- bench-quality:begin/end -->` markers of the file given to `--write`.

    .venv/bin/python -m tests.benchmarks.bench --set quality --events 300000 --runs 3 \
        --write BENCHMARKS.md

`--set sensor` and `--set drift` (issue 18) run one pipeline and its ceiling
alone, for quick before/after comparisons (no memory or scaling runs):

    .venv/bin/python -m tests.benchmarks.bench --set drift --before 4b45a7b \
        --events 300000 --runs 3

`--before REV` (issue 12, point 7: a refactor must not lower the throughput,
measured before and after in one run) adds, next to every streamwatch
contender of the set, the same contender of an earlier revision: a temporary
`git worktree` of REV (`tests.benchmarks.revision`, removed at exit, also on
Ctrl-C) whose OWN copy of the contender script runs with only that tree on
`sys.path`, so it imports the module paths of its own time. Both read the
same topics in the same run, interleaved and alternating (run 1: before,
after; run 2: after, before; ...), and a table gives per pipeline the
before and after events/s, the after/before ratio of each run (median, min-max),
CPU per million events and the ceiling. The quick comparison alone:

    .venv/bin/python -m tests.benchmarks.bench --before 9da71f9 --events 300000 --runs 3 \
        --skip quix,faust,memory,scaling
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.connectors.embedded import EmbeddedBroker
from tests.benchmarks import dataset as datasets
from tests.benchmarks import revision as revisions
from tests.benchmarks.contenders.common import Spec

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
QUIX_PYTHON = ROOT / ".venv-quix" / "bin" / "python"


@dataclass(frozen=True)
class Contender:
    label: str
    module: str  # under tests.benchmarks.contenders
    kind: str  # the dataset it reads
    python: str = sys.executable
    root: Path = ROOT  # the tree whose contender script and code run (--before: an older one)
    revision: str | None = None  # the short commit id of `root`, when it is not this tree

    @property
    def isolated(self) -> bool:
        """Started with only its own tree importable: the contenders --before compares."""
        return self.module == SW

    def available(self) -> str | None:
        """None when it can run here, else why not."""
        if not Path(self.python).exists():
            return f"{self.python} is missing (run scripts/bench.sh, which installs it)"
        return None


SW = "streamwatch_pipeline"  # the module of the streamwatch contenders

MAIN = [
    Contender("ceiling (confluent-kafka + orjson)", "ceiling", "ctr"),
    Contender("streamwatch CTR", "streamwatch_pipeline", "ctr"),
    Contender("Quix Streams CTR", "quix_ctr", "ctr", str(QUIX_PYTHON)),
    Contender("faust CTR (idiomatic)", "faust_ctr", "ctr"),
    Contender("ceiling, sensor data", "ceiling", "sensor"),
    Contender("streamwatch sensor + cluster", "streamwatch_pipeline", "sensor"),
    Contender("ceiling, inference data", "ceiling", "drift"),
    Contender("streamwatch drift + service", "streamwatch_pipeline", "drift"),
]
# issue 15, point 7: the drift/service pipeline with and without the quality monitor
QUALITY_SET = [
    MAIN[6],
    MAIN[7],
    Contender("ceiling, inference + labels data", "ceiling", "quality"),
    Contender("streamwatch drift + service + quality", "streamwatch_pipeline", "quality"),
]
# issue 18: the sensor pipeline and its ceiling alone, for before/after comparisons of the
# sensor operators (a small, quick run; no memory or scaling runs)
SENSOR_SET = [MAIN[4], MAIN[5]]
# issue 18: the drift + service pipeline and its ceiling alone, likewise
DRIFT_SET = [MAIN[6], MAIN[7]]
# issue 18: the CTR pipeline and its ceiling alone, likewise
CTR_SET = [MAIN[0], MAIN[1]]
SETS = {
    "main": MAIN,
    "quality": QUALITY_SET,
    "sensor": SENSOR_SET,
    "drift": DRIFT_SET,
    "ctr": CTR_SET,
}


@dataclass
class Run:
    contender: str
    result: dict[str, Any]
    peak_rss_mb: float
    broker_cpu_s: float
    returncode: int

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.result)

    @property
    def events_per_s(self) -> float:
        return self.result["events"] / self.result["seconds"]

    @property
    def cpu_per_million(self) -> float:
        return self.result["cpu_seconds"] / self.result["events"] * 1e6


@dataclass
class Bench:
    broker: EmbeddedBroker
    workdir: Path
    counter: int = 0
    runs: dict[str, list[Run]] = field(default_factory=dict)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop_contenders(self) -> None:
        """Kill every contender still running (the harness stopped early: Ctrl-C, a kill,
        an error), so none outlives it; those already waited for are left alone."""
        for proc in self.started:
            if proc.returncode is None:
                proc.kill()
                proc.wait()

    def broker_cpu(self) -> float:
        assert self.broker.process is not None
        fields = Path(f"/proc/{self.broker.process.pid}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / CLK_TCK

    def spawn(
        self, contender: Contender, data: datasets.Dataset, **options: Any
    ) -> subprocess.Popen[bytes]:
        self.counter += 1
        name = f"{contender.module}-{data.kind}-{self.counter}"
        work = self.workdir / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        spec = Spec(
            name=contender.label,
            bootstrap=self.broker.bootstrap,
            group=options.pop("group", f"bench-{name}"),
            dataset=data,
            workdir=work,
            result=work / "result.json",
            options=options,
        )
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec.to_json()))
        module = f"tests.benchmarks.contenders.{contender.module}"
        if contender.isolated:  # its tree's own script, no other checkout importable
            argv = revisions.command(contender.python, contender.root, module, str(spec_path))
        else:
            argv = [contender.python, "-m", module, str(spec_path)]
        log = open(work / "output.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            argv,
            cwd=contender.root,
            env=revisions.environment(contender.root),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.started.append(proc)
        proc.result_path = spec.result  # type: ignore[attr-defined]
        proc.log_path = work / "output.log"  # type: ignore[attr-defined]
        return proc

    def measure(
        self,
        contender: Contender,
        data: datasets.Dataset,
        workers: int = 1,
        label: str | None = None,
        timeout: float = 1800,
        **options: Any,
    ) -> Run:
        """Run the contender (`workers` processes in one group) to completion."""
        broker0 = self.broker_cpu()
        group = f"bench-group-{self.counter + 1}"
        procs = [self.spawn(contender, data, group=group, **options) for _ in range(workers)]
        peak = 0.0
        results = []
        code = 0
        deadline = time.monotonic() + timeout
        for proc in procs:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.1)
            proc.returncode = os.waitstatus_to_exitcode(status)
            code = code or proc.returncode
            peak = max(peak, usage.ru_maxrss / 1024)
            try:
                results.append(json.loads(proc.result_path.read_text()))  # type: ignore[attr-defined]
            except FileNotFoundError:
                tail = proc.log_path.read_text(errors="replace")[-2000:]  # type: ignore[attr-defined]
                print(f"  ! {contender.label} wrote no result (exit {proc.returncode}):\n{tail}")
                code = code or 1
        broker = self.broker_cpu() - broker0
        merged = merge(results) if len(results) == len(procs) else {}
        run = Run(contender.label, merged, peak, broker, code)
        self.runs.setdefault(label or contender.label, []).append(run)
        return run


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers of one group: one result, timed from first start to last stop."""
    if len(results) == 1:
        return results[0]
    out = dict(results[0])
    out["events"] = sum(r["events"] for r in results)
    out["wall_start"] = min(r["wall_start"] for r in results)
    out["wall_end"] = max(r["wall_end"] for r in results)
    out["seconds"] = out["wall_end"] - out["wall_start"]
    out["cpu_seconds"] = sum(r["cpu_seconds"] for r in results)
    out["per_worker_events"] = [r["events"] for r in results]
    rows: dict[str, int] = {}
    for r in results:
        for table, n in r.get("rows", {}).items():
            rows[table] = rows.get(table, 0) + n
    out["rows"] = rows
    delays: dict[str, list[float]] = {}
    for r in results:
        for kind, values in r.get("delays", {}).items():
            delays.setdefault(kind, []).extend(values)
    out["delays"] = delays
    return out


# -- reporting ------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    h = q * (len(ordered) - 1)
    lo = int(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def main_table(bench: Bench, contenders: list[Contender]) -> list[str]:
    ceilings = {
        c.kind: statistics.median(r.events_per_s for r in bench.runs.get(c.label, []) if r.ok)
        for c in contenders
        if c.module == "ceiling" and any(r.ok for r in bench.runs.get(c.label, []))
    }
    lines = [
        "| contender | data | events/s, median (min-max) | vs ceiling | CPU s / M events "
        "| peak RSS MB | broker CPU s / M | close->row p50 / p99 ms | close->alert p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in contenders:
        runs = [r for r in bench.runs.get(c.label, []) if r.ok]
        if not runs:
            lines.append(f"| {c.label} | {c.kind} | failed or skipped | | | | | | |")
            continue
        eps = [r.events_per_s for r in runs]
        ratio = statistics.median(eps) / ceilings[c.kind] if c.kind in ceilings else None
        rows = [d for r in runs for d in r.result.get("delays", {}).get("row", [])]
        alerts = [d for r in runs for d in r.result.get("delays", {}).get("alert", [])]
        broker = [r.broker_cpu_s / r.result["events"] * 1e6 for r in runs]
        delay_cols = (
            f"{ms(quantile(rows, 0.5))} / {ms(quantile(rows, 0.99))} | "
            f"{ms(quantile(alerts, 0.5))} / {ms(quantile(alerts, 0.99))}"
            if c.module == "streamwatch_pipeline"
            else "| "
        ).rstrip()
        lines.append(
            f"| {c.label} | {c.kind} | {spread(eps)} | "
            f"{'-' if ratio is None else f'{ratio:.0%}'} | "
            f"{spread([r.cpu_per_million for r in runs], '{:.1f}')} | "
            f"{spread([r.peak_rss_mb for r in runs], '{:.0f}')} | "
            f"{spread(broker, '{:.1f}')} | {delay_cols} |"
        )
    return lines


def ratio_lines(bench: Bench) -> list[str]:
    def med(label: str) -> float | None:
        runs = [r for r in bench.runs.get(label, []) if r.ok]
        return statistics.median(r.events_per_s for r in runs) if runs else None

    sw = med("streamwatch CTR")
    checks = [
        ("streamwatch CTR / ceiling", sw, med(MAIN[0].label), 0.5),
        ("streamwatch CTR / Quix Streams", sw, med("Quix Streams CTR"), 3.0),
        ("streamwatch CTR / faust", sw, med("faust CTR (idiomatic)"), 10.0),
        ("streamwatch sensor / ceiling", med(MAIN[5].label), med(MAIN[4].label), 0.3),
        # issue 18 raised the drift + service target from issue 5's 30 % to 40 %
        ("streamwatch drift / ceiling", med(MAIN[7].label), med(MAIN[6].label), 0.4),
    ]
    lines = ["| ratio (medians, same run) | measured | target | met |", "|---|---:|---:|---|"]
    for name, a, b, target in checks:
        if a is None or b is None:
            lines.append(f"| {name} | - | {target:g} | not measured |")
            continue
        value = a / b
        lines.append(
            f"| {name} | {value:.2f} | {target:g} | {'yes' if value >= target else 'NO'} |"
        )
    return lines


def quality_lines(
    bench: Bench, contenders: list[Contender], data: dict[str, datasets.Dataset]
) -> list[str]:
    """Per inference log, the unit both streamwatch pipelines share (the labels are
    extra messages of the quality dataset), and the ratios of the same run."""

    def logs_per_s(c: Contender) -> list[float]:
        logs = data[c.kind].messages_on("inference-logs")
        return [logs / r.result["seconds"] for r in bench.runs.get(c.label, []) if r.ok]

    lines = [
        "| contender | inference logs in the data | inference logs/s, median (min-max) "
        "| CPU s / M inference logs | quality_windows rows | alerts |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in contenders:
        runs = [r for r in bench.runs.get(c.label, []) if r.ok]
        logs = data[c.kind].messages_on("inference-logs")
        if not runs:
            lines.append(f"| {c.label} | {logs:,} | failed or skipped | | | |")
            continue
        cpu = [r.result["cpu_seconds"] / logs * 1e6 for r in runs]
        sw = c.module == "streamwatch_pipeline"
        quality_rows = runs[-1].result.get("rows", {}).get("quality_windows", "-") if sw else ""
        alerts = runs[-1].result.get("alerts", "-") if sw else ""
        lines.append(
            f"| {c.label} | {logs:,} | {spread(logs_per_s(c))} | {spread(cpu, '{:.1f}')} "
            f"| {quality_rows} | {alerts} |"
        )

    def med(c: Contender) -> float | None:
        values = logs_per_s(c)
        return statistics.median(values) if values else None

    # against its ceiling on the same data, the ratio of logs/s is that of events/s
    ceiling_off, off, ceiling_on, on = contenders
    lines += ["", "| ratio (medians, same run) | measured |", "|---|---:|"]
    for name, a, b in (
        ("drift + service / its ceiling (drift data)", off, ceiling_off),
        ("drift + service + quality / its ceiling (data with labels)", on, ceiling_on),
        ("drift + service + quality / drift + service (inference logs/s)", on, off),
    ):
        ra, rb = med(a), med(b)
        lines.append(f"| {name} | {'-' if ra is None or rb is None else f'{ra / rb:.2f}'} |")
    return lines


def with_before(contenders: list[Contender], rev: revisions.Revision) -> list[Contender]:
    """Every streamwatch contender preceded by its twin of the revision `rev`."""
    out: list[Contender] = []
    for c in contenders:
        if c.isolated:
            out.append(
                Contender(
                    f"{c.label} (before: {rev.short})",
                    c.module,
                    c.kind,
                    c.python,
                    root=rev.root,
                    revision=rev.short,
                )
            )
        out.append(c)
    return out


def run_order(contenders: list[Contender], index: int) -> list[Contender]:
    """The list for run `index` (0-based): each before/after pair as given in even runs,
    swapped in odd ones, so neither version always reads right after the ceiling or
    after the other (a position effect, such as the broker's caches, cancels out)."""
    order = list(contenders)
    i = 0
    while index % 2 and i < len(order) - 1:
        if order[i].revision is not None and order[i + 1].revision is None:
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 1  # past the pair: its before must not move on
        i += 1
    return order


def before_after_table(bench: Bench, contenders: list[Contender]) -> list[str]:
    """Per pipeline: before and after events/s (medians), the after/before ratio of each run
    (the two read the same data in the same run: a paired comparison), CPU per million
    events, and the ceiling on the same data for scale."""

    def ok(label: str) -> list[Run]:
        return [r for r in bench.runs.get(label, []) if r.ok]

    def med(values: list[float], fmt: str) -> str:
        return spread(values, fmt) if values else "-"

    lines = [
        "| pipeline | data | ceiling events/s | before events/s | after events/s "
        "| after / before, per run | CPU s / M events, before | CPU s / M events, after "
        "| before / ceiling | after / ceiling |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, before in enumerate(contenders[:-1]):
        after = contenders[i + 1]
        if before.revision is None or after.revision is not None:
            continue
        ceiling = next(
            (c for c in contenders if c.module == "ceiling" and c.kind == after.kind), None
        )
        ceiling_eps = [r.events_per_s for r in ok(ceiling.label)] if ceiling else []
        b_eps = [r.events_per_s for r in ok(before.label)]
        a_eps = [r.events_per_s for r in ok(after.label)]
        # pairs by run: run k of the before with run k of the after, both complete
        paired = [
            a.events_per_s / b.events_per_s
            for b, a in zip(bench.runs[before.label], bench.runs[after.label], strict=False)
            if a.ok and b.ok
        ]

        def share(eps: list[float], ceiling_eps: list[float] = ceiling_eps) -> str:
            if not eps or not ceiling_eps:
                return "-"
            return f"{statistics.median(eps) / statistics.median(ceiling_eps):.0%}"

        lines.append(
            f"| {after.label.removeprefix('streamwatch ')} | {after.kind} "
            f"| {med(ceiling_eps, '{:,.0f}')} | {med(b_eps, '{:,.0f}')} "
            f"| {med(a_eps, '{:,.0f}')} | {med(paired, '{:.2f}')} "
            f"| {med([r.cpu_per_million for r in ok(before.label)], '{:.1f}')} "
            f"| {med([r.cpu_per_million for r in ok(after.label)], '{:.1f}')} "
            f"| {share(b_eps)} | {share(a_eps)} |"
        )
    return lines


def check_isolated(contenders: list[Contender]) -> None:
    """Each tree's streamwatch contender imports only that tree's modules (refuses otherwise):
    a before that silently ran the current code would compare a version with itself."""
    for root in dict.fromkeys(c.root for c in contenders if c.isolated):
        files = revisions.imported_from(sys.executable, root, f"tests.benchmarks.contenders.{SW}")
        leaked = revisions.foreign(files, root)
        if leaked:
            raise SystemExit(f"modules from outside {root}:\n  " + "\n  ".join(leaked))
        print(
            f"checked: the streamwatch contender of {root} imports {len(files)} modules, "
            "all from that tree",
            flush=True,
        )


def memory_table(run: Run) -> list[str]:
    rss = {int(k): v for k, v in run.result.get("rss_by_million", {}).items()}
    lines = ["| events processed | resident MB |", "|---:|---:|"]
    for m in sorted(rss):
        lines.append(f"| {m:,} M | {rss[m]:.0f} |")
    if len(rss) >= 2:
        first, last = rss[min(rss)], rss[max(rss)]
        lines.append(f"| growth {min(rss)} M -> {max(rss)} M | {(last - first) / first:+.1%} |")
    lines.append(f"| peak (whole process) | {run.peak_rss_mb:.0f} |")
    return lines


def scaling_table(rows: list[tuple[str, Run]]) -> list[str]:
    lines = [
        "| configuration | events | events/s | CPU s / M events | broker CPU s / M "
        "| peak RSS MB (per worker) | rows written |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in rows:
        if not run.ok:
            lines.append(f"| {name} | failed | | | | | |")
            continue
        r = run.result
        lines.append(
            f"| {name} | {r['events']:,} | {run.events_per_s:,.0f} | {run.cpu_per_million:.1f} | "
            f"{run.broker_cpu_s / r['events'] * 1e6:.1f} | {run.peak_rss_mb:.0f} | "
            f"{sum(r.get('rows', {}).values()):,} |"
        )
    return lines


def write_markdown(path: Path, text: str, marker: str = "bench") -> None:
    """Replace the generated section of BENCHMARKS.md (between the markers)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    current = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in current:
        current += f"\n{begin}\n{end}\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    path.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", current))


# -- the command --------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="messages per dataset")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--campaigns", type=int, default=100, help="keys of the CTR dataset")
    parser.add_argument("--sensors", type=int, default=100)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--skip", default="", help="comma list of: quix, faust, memory, scaling")
    parser.add_argument(
        "--faust-events",
        type=int,
        default=200_000,
        help="messages of the CTR data the faust contender reads (a CTR dataset of its own, "
        "same generator and campaigns): at ~1.5 k events/s a million took 33 of the full "
        "run's 52 minutes; 0: the same messages as the others",
    )
    parser.add_argument(
        "--set",
        choices=sorted(SETS),
        default="main",
        help="contenders: main (all, default), quality (drift + service with and without "
        "the quality monitor, and their ceilings), sensor (the sensor pipeline and its "
        "ceiling), drift (the drift + service pipeline and its ceiling) or ctr (the CTR "
        "pipeline and its ceiling); memory and "
        "scaling runs only with main",
    )
    parser.add_argument("--workdir", default="/tmp/streamwatch-bench")
    parser.add_argument("--write", metavar="BENCHMARKS.md", help="put the tables into this file")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also run the streamwatch contenders of this git revision (a temporary worktree), "
        "interleaved with the current ones, and compare them (issue 12, point 7)",
    )
    args = parser.parse_args()
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    # a kill (SIGTERM) unwinds like Ctrl-C, so the --before worktree is removed either way
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with contextlib.ExitStack() as stack:
        rev = None
        if args.before:
            rev = stack.enter_context(revisions.checked_out(ROOT, args.before, workdir))
            print(f"before: {rev.asked} = {rev.short} ({rev.subject[:72]}) at {rev.root}")
        run_all(args, workdir, rev)


def run_all(args: argparse.Namespace, workdir: Path, rev: revisions.Revision | None) -> None:
    """Load the datasets, run the contenders, print (and --write) the tables."""
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = time.time()
    command = "python -m tests.benchmarks.bench " + " ".join(sys.argv[1:])
    out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    with (
        EmbeddedBroker(log_path=workdir / "tansu.log") as broker,
        contextlib.ExitStack() as cleanup,
    ):
        bench = Bench(broker, workdir)
        cleanup.callback(bench.stop_contenders)  # first, then the broker stops
        keys = {
            "ctr": args.campaigns,
            "sensor": args.sensors,
            "drift": args.models,
            "quality": args.models,
        }
        chosen = SETS[args.set]
        kinds = datasets.KINDS
        if args.set == "quality":
            kinds = ("quality", "drift")  # drift: the quality data's inference logs alone
        elif args.set in ("sensor", "drift", "ctr"):
            kinds = (args.set,)
        data: dict[str, datasets.Dataset] = {}
        for kind in kinds:
            t0 = time.monotonic()
            events, duration = args.events, None
            if args.set == "quality" and kind == "drift":
                events = data["quality"].messages_on("inference-logs")
                duration = datasets.scenario("quality", args.events, keys["quality"]).duration_s
            data[kind] = datasets.load(
                broker.bootstrap,
                kind,
                events,
                args.partitions,
                keys[kind],
                f"main-{kind}",
                duration_s=duration,
            )
            d = data[kind]
            print(
                f"loaded {kind}: {d.events:,} messages, {d.keys} keys, "
                f"{d.event_seconds:,} s of event time, in {time.monotonic() - t0:.0f} s",
                flush=True,
            )
        contenders = [
            c
            for c in chosen
            if not (c.module == "quix_ctr" and "quix" in skip)
            and not (c.module == "faust_ctr" and "faust" in skip)
        ]
        # faust reads a CTR dataset of its own when it is smaller: its rate is the figure
        # compared (events/s), and a million events at its ~1.5 k/s would be most of the run
        faust_data = None
        faust_events = min(args.faust_events or args.events, args.events)
        if (
            "ctr" in data
            and faust_events < args.events
            and any(c.module == "faust_ctr" for c in contenders)
        ):
            faust_data = datasets.load(
                broker.bootstrap, "ctr", faust_events, args.partitions, keys["ctr"], "faust-ctr"
            )
            print(f"loaded ctr for faust: {faust_data.events:,} messages", flush=True)
        for c in contenders:
            why = c.available()
            if why:
                print(f"skipping {c.label}: {why}")
        contenders = [c for c in contenders if c.available() is None]
        if rev is not None:
            contenders = with_before(contenders, rev)
            check_isolated(contenders)
        for i in range(args.runs):
            for c in run_order(contenders, i):
                run = bench.measure(
                    c, faust_data if faust_data and c.module == "faust_ctr" else data[c.kind]
                )
                detail = f"{run.events_per_s:,.0f} events/s" if run.ok else "FAILED"
                print(f"run {i + 1}/{args.runs} {c.label}: {detail}", flush=True)

        say(f"Command: `{command}`  ")
        say(
            f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
            f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}; broker, contenders "
            "and ClickHouse (chDB, in the streamwatch process) share the machine.  "
        )
        if args.set == "main":
            say(
                f"Data: {args.events:,} messages per dataset, {args.partitions} partitions; CTR "
                f"{args.campaigns} campaigns ({data['ctr'].event_seconds:,} s of event time), "
                f"sensor {args.sensors} sensors, inference {args.models} models"
                + (
                    f"; faust reads a CTR dataset of its own of {faust_data.events:,} messages "
                    "(same generator and campaigns, `--faust-events`)"
                    if faust_data
                    else ""
                )
                + f". {args.runs} runs, interleaved; median (min-max)."
            )
        elif args.set == "sensor":
            say(
                f"Data: {args.events:,} messages, {args.partitions} partitions, "
                f"{args.sensors} sensors ({data['sensor'].event_seconds:,} s of event time). "
                f"{args.runs} runs, interleaved; median (min-max)."
            )
        elif args.set == "ctr":
            say(
                f"Data: {args.events:,} messages, {args.partitions} partitions, "
                f"{args.campaigns} campaigns ({data['ctr'].event_seconds:,} s of event time). "
                f"{args.runs} runs, interleaved; median (min-max)."
            )
        elif args.set == "drift":
            say(
                f"Data: {args.events:,} messages, {args.partitions} partitions, "
                f"{args.models} models ({data['drift'].event_seconds:,} s of event time). "
                f"{args.runs} runs, interleaved; median (min-max)."
            )
        else:
            d, q = data["drift"], data["quality"]
            say(
                f"Data: {args.partitions} partitions, {args.models} models; with labels "
                f"(quality): {args.events:,} messages, {q.messages_on('inference-logs'):,} "
                f"inference logs and {q.messages_on('labels'):,} labels "
                f"({q.event_seconds:,} s of event time); drift: the same "
                f"{d.messages_on('inference-logs'):,} inference logs without the labels "
                f"({d.event_seconds:,} s). {args.runs} runs, interleaved; median (min-max)."
            )
        if rev is not None:
            say(
                f"Before: `{rev.asked}` = {rev.short} ({rev.subject[:100]}), its own "
                "contender script from a temporary worktree; after: this tree"
                f"{'' if args.runs < 2 else ', the pair swapped every other run'}."
            )
            say()
            say(f"### Before ({rev.short}) and after, same run")
            say()
            for line in before_after_table(bench, contenders):
                say(line)
        say()
        say("### Side by side")
        say()
        for line in main_table(bench, contenders):
            say(line)
        say()
        if args.set in ("main", "sensor", "drift", "ctr"):
            for line in ratio_lines(bench):
                say(line)
        else:
            for line in quality_lines(bench, contenders, data):
                say(line)

        if "memory" not in skip and args.set == "main":
            big = datasets.load(
                broker.bootstrap,
                "ctr",
                5 * args.events,
                args.partitions,
                args.campaigns,
                "memory-ctr",
            )
            run = bench.measure(MAIN[1], big, label="memory")
            say()
            say(f"### Resident memory over {big.events:,} CTR events ({args.campaigns} campaigns)")
            say()
            for line in memory_table(run):
                say(line)

        if "scaling" not in skip and args.set == "main":
            rows: list[tuple[str, Run]] = []
            half = max(100_000, args.events // 2)
            for partitions in (1, 2, 4):
                d = datasets.load(
                    broker.bootstrap,
                    "ctr",
                    half,
                    partitions,
                    args.campaigns,
                    f"scale-p{partitions}",
                )
                for workers in (1, 2):
                    if workers > partitions:
                        continue
                    run = bench.measure(MAIN[1], d, workers=workers, label="scaling")
                    rows.append((f"{partitions} partition(s), {workers} worker(s)", run))
                    print(f"scaling {rows[-1][0]}: {run.events_per_s:,.0f} events/s", flush=True)
            for n_keys in (1_000, 10_000, 100_000):
                d = datasets.load(
                    broker.bootstrap, "ctr", half, args.partitions, n_keys, f"scale-k{n_keys}"
                )
                run = bench.measure(MAIN[1], d, label="scaling")
                rows.append((f"{n_keys:,} campaigns, {args.partitions} partitions, 1 worker", run))
                print(f"scaling {rows[-1][0]}: {run.events_per_s:,.0f} events/s", flush=True)
            say()
            say(f"### Scaling: streamwatch CTR, {half:,} events each, one run")
            say()
            for line in scaling_table(rows):
                say(line)

        say()
        say(f"Total benchmark time: {(time.time() - started) / 60:.0f} min.")
    (workdir / "runs.json").write_text(
        json.dumps(
            {k: [r.__dict__ for r in v] for k, v in bench.runs.items()}, indent=1, default=str
        )
    )
    if args.write:
        marker = "bench" if args.set == "main" else f"bench-{args.set}"
        if rev is not None:  # a comparison: its own section, the measured tables stay
            marker += "-before"
        write_markdown(Path(args.write), "\n".join(out), marker)
        print(f"wrote the tables into {args.write}")


if __name__ == "__main__":
    main()
