"""Every command the README and the `--help` examples show, run as a user runs it.

The commands are read from README.md (```bash blocks, and inline `streamwatch ...`
spans) and from the "Example:" section of every subcommand's help. Each one must
be covered by PLAN below, which says how it runs here:

- against the embedded setup: the README's `streamwatch run` is started from a
  scratch directory (embedded Tansu broker, chDB under ./var, nothing set but a
  free web port) and the other commands talk to it, as from a second terminal;
- long-running ones (`run`, `alerts`) are started, read until they printed
  output, and stopped; `simulate` and `demo` get `--speed 0` (as fast as possible)
  so the run takes seconds, and `demo` a shorter `--duration`;
- commands that point at servers this machine does not have (the README's
  "real cluster" block) must fail within a bounded time with ONE line naming the
  address and the variable to fix;
- a few are skipped with the reason (they install software or run this suite).

No command may print a Python traceback. A README command missing from PLAN fails
`test_every_command_is_planned`: add it there when you add it to the docs.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import orjson
import pytest

from streams.cli import main
from streams.config import DEFAULT_RULES
from streams.connectors.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI = [sys.executable, "-m", "streams.cli"]
TRACEBACK = "Traceback (most recent call last)"
FAST = ["--speed", "0"]  # appended: publish as fast as possible (the last value wins)

# -- what the docs show --------------------------------------------------------------


@dataclass
class Command:
    text: str  # normalized: one line, single spaces
    argv: list[str]  # without leading VAR=value assignments
    env: dict[str, str] = field(default_factory=dict)  # VAR=value prefixes and exports
    where: str = ""


def _normalize(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def _commands_of_block(block: str, where: str) -> Iterator[Command]:
    """Shell commands of a ```bash block: continuation lines and multi-line quotes
    joined, comments dropped; `export VAR=...` lines apply to the block's later lines.
    A command's text is its words joined by single spaces (quotes removed)."""
    exported: dict[str, str] = {}
    pending = ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.rstrip().endswith("\\"):
            continue
        try:
            words = shlex.split(pending.replace("\\\n", " "), comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        pending = ""
        if not words:
            continue
        if words[0] == "export":
            for word in words[1:]:
                name, _, value = word.partition("=")
                exported[name] = value
            yield Command(" ".join(words), words, {}, where)
            continue
        prefix = []
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            prefix.append(words.pop(0))
        env = {**exported, **dict(w.partition("=")[::2] for w in prefix)}
        yield Command(_normalize(" ".join(prefix + words)), words, env, where)


def readme_commands() -> list[Command]:
    text = README.read_text()
    found: list[Command] = []
    for i, block in enumerate(re.findall(r"```bash\n(.*?)```", text, re.DOTALL)):
        found += _commands_of_block(block, f"README.md bash block {i + 1}")
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if re.match(r"(\.venv/bin/)?streamwatch |(scripts/|docker |kubectl )", span):
            found += _commands_of_block(span, "README.md text")
    return found


def _walk(command: click.Command, path: list[str]) -> Iterator[tuple[list[str], str]]:
    yield path, command.help or ""
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, [*path, name])


def help_examples() -> list[Command]:
    """The lines under "Example:" in every command's help (continuations joined)."""
    found: list[Command] = []
    for path, text in _walk(main, []):
        if "Example:" not in text:
            continue
        example = text.split("Example:", 1)[1]
        lines = [line.strip() for line in example.strip().splitlines()]
        block = "\n".join(line for line in lines if line)
        found += _commands_of_block(block, f"help of `streamwatch {' '.join(path)}`")
    return found


# How each command is covered. Keys are the normalized command texts.
SKIP = "skip"
PLAN: dict[str, tuple[str, str]] = {
    # README: fresh-machine scripts
    "scripts/demo.sh": (SKIP, "installs a venv; the demo it runs is run below (demo)"),
    "scripts/test.sh": (SKIP, "installs and runs this whole suite"),
    "scripts/bench.sh": (SKIP, "benchmarks, minutes long (BENCHMARKS.md)"),
    ".venv/bin/pytest tests/test_ctr_operator.py -q": (SKIP, "a test file of this suite"),
    ".venv/bin/python -m schemas.generate": (
        SKIP,
        "rewrites generated files; tests/test_schemas.py checks they are current",
    ),
    # README: Docker and Kubernetes (no engine or cluster here; their files are
    # checked by tests/test_deploy_compose.py and tests/test_k8s.py)
    "docker compose up -d": (SKIP, "needs a Docker engine"),
    "docker compose up --scale worker=2": (SKIP, "needs a Docker engine"),
    "docker compose up -d clickhouse": (SKIP, "needs a Docker engine"),
    "docker compose stop|start clickhouse": (SKIP, "needs a Docker engine"),
    "kubectl apply -k deploy/k8s": (SKIP, "needs a Kubernetes cluster"),
    "export GRAFANA_ADMIN_PASSWORD=$(openssl rand -base64 18)": (SKIP, "for docker compose"),
    "STREAMWATCH_CLICKHOUSE=http://streamwatch:streamwatch@localhost:8123/streamwatch "
    ".venv/bin/pytest tests/test_clickhouse_server.py -v -rs": (
        SKIP,
        "a test file of this suite, against a ClickHouse server",
    ),
    # README: the embedded walkthrough (test_walkthrough)
    ".venv/bin/streamwatch demo --help": ("offline", ""),
    ".venv/bin/streamwatch run": ("worker", ""),
    "streamwatch run": ("worker", ""),
    ".venv/bin/streamwatch simulate --incident ctr_drop:cmp-002:1200:600:0.2": ("simulate", ""),
    ".venv/bin/streamwatch alerts --follow --severity critical": ("follow", ""),
    ".venv/bin/streamwatch query SELECT campaign_id, sum(clicks)/sum(impressions) AS ctr "
    "FROM streamwatch.ctr_windows FINAL GROUP BY campaign_id": ("query", ""),
    "streamwatch config show": ("offline", ""),
    "streamwatch -c FILE": (SKIP, "a placeholder; `config show` runs with a file below"),
    "streamwatch query": (SKIP, "the command named in prose; its examples run (query)"),
    # README: a real cluster, which this machine does not have (test_clear_failures)
    "export STREAMWATCH_KAFKA=kafka-1:9092,kafka-2:9092": ("export", ""),
    "export STREAMWATCH_CLICKHOUSE=https://user:password@clickhouse:8443/streamwatch": (
        "export",
        "",
    ),
    # help examples
    "streamwatch demo": ("demo", "run once, as the demo's own example (a shorter run)"),
    "streamwatch demo --duration 1800 --speed 90": ("demo", ""),
    "STREAMWATCH_KAFKA=kafka:9092 STREAMWATCH_CLICKHOUSE=http://user:pass@clickhouse:8123/"
    "streamwatch streamwatch run": ("unreachable", "kafka:9092"),
    "streamwatch simulate --duration 3600 --speed 120 --incident ctr_drop:cmp-002:1800:600:0.2": (
        "simulate",
        "",
    ),
    "streamwatch query SELECT campaign_id, sum(clicks)/sum(impressions) AS ctr FROM "
    "streamwatch.ctr_windows FINAL GROUP BY campaign_id": ("query", ""),
    "streamwatch alerts --follow --severity critical --kind ctr": ("follow", ""),
    "streamwatch alerts --follow --rule ctr_* --entity cmp-00?": ("follow", ""),
    "streamwatch alerts --follow --json | jq .message": ("follow", ""),
    "STREAMWATCH_CONFIG=prod.toml streamwatch config show": ("offline", ""),
    "streamwatch reference build train_sample.csv --model-id ranker --version 2026-11": (
        "offline",
        "",
    ),
}


def test_every_command_is_planned() -> None:
    commands = readme_commands() + help_examples()
    assert len(commands) >= 20  # the parsing itself works
    missing = [f"{c.where}: {c.text}" for c in commands if c.text not in PLAN]
    assert not missing, "commands with no plan in tests/test_readme_commands.py:\n" + "\n".join(
        missing
    )


def test_the_readme_simulate_example_names_a_simulated_campaign() -> None:
    """The default simulation has cmp-000..cmp-002: the README's example must use one."""
    (simulate,) = [c for c in readme_commands() if "simulate" in c.argv]
    incident = simulate.argv[simulate.argv.index("--incident") + 1]
    assert incident.split(":")[1] in ("cmp-000", "cmp-001", "cmp-002")


# -- running them ------------------------------------------------------------------------


def _argv(command: Command) -> list[str]:
    words = list(command.argv)
    assert Path(words[0]).name == "streamwatch", words
    return CLI + words[1:]


class Scratch:
    """A scratch directory as a user's working directory, with a free web port."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = free_port()

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMWATCH_")}
        env["PYTHONPATH"] = str(ROOT)
        env["STREAMWATCH_WEB_PORT"] = str(self.port)  # 6066 may be taken on a shared machine
        env["COLUMNS"] = "200"
        env.update(extra or {})
        return env

    def run(
        self, argv: list[str], extra: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv,
            cwd=self.path,
            env=self.env(extra),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert TRACEBACK not in done.stdout + done.stderr, f"{argv}:\n{done.stderr}"
        return done

    def start(
        self, argv: list[str], extra: dict[str, str] | None = None, pipe_to: list[str] | None = None
    ) -> Follower:
        return Follower(argv, self.path, self.env(extra), pipe_to)


class Follower:
    """A long-running command (optionally piped into another, as `| jq .message`):
    its output collected by threads until it is stopped."""

    def __init__(
        self, argv: list[str], cwd: Path, env: dict[str, str], pipe_to: list[str] | None = None
    ) -> None:
        self.argv = argv
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a signal for it alone, not for the test
        )
        self.tail: subprocess.Popen[str] | None = None
        stdout = self.process.stdout
        if pipe_to:
            self.tail = subprocess.Popen(
                pipe_to, stdin=stdout, stdout=subprocess.PIPE, text=True, cwd=cwd
            )
            assert stdout is not None
            stdout.close()  # the tail holds the pipe: it ends when the head exits
            stdout = self.tail.stdout
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _read(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def wait_for_output(self, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not self.out and time.monotonic() < deadline:
            assert self.process.poll() is None, f"{what} exited:\n{''.join(self.err)}"
            time.sleep(0.5)
        assert self.out, f"{what} printed nothing in {timeout} s:\n{''.join(self.err)}"

    def wait_for_stderr(self, text: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.err) and time.monotonic() < deadline:
            assert self.process.poll() is None, f"{what} exited:\n{''.join(self.err)}"
            time.sleep(0.2)
        assert any(text in line for line in self.err), f"{what}: no {text!r}:\n{self.err}"

    def stop(self, sig: int = signal.SIGINT, timeout: float = 90) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGUSR1)  # faulthandler: every stack
                time.sleep(2)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError(f"did not stop on {sig}:\n{''.join(self.err)}") from None
        if self.tail is not None:
            assert self.tail.wait(30) == 0, f"{self.tail.args} failed"
        time.sleep(0.2)  # the reader threads drain the pipes
        text = "".join(self.out + self.err)
        assert TRACEBACK not in text, text
        return self.process.returncode


def _http(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_http(port: int, path: str, worker: Follower, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.process.poll() is None, "worker exited:\n" + "".join(worker.err)
        try:
            _http(port, path)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer on {path} in {timeout} s:\n" + "".join(worker.err))


def _by_role(role: str) -> list[Command]:
    return [c for c in readme_commands() + help_examples() if PLAN.get(c.text, ("",))[0] == role]


def test_walkthrough(tmp_path: Path) -> None:
    """The README's two-terminal walkthrough and the help examples that need a worker."""
    scratch = Scratch(tmp_path)
    (run,) = [c for c in _by_role("worker") if c.text == ".venv/bin/streamwatch run"]
    worker = scratch.start(_argv(run))
    followers: list[Follower] = []
    try:
        _wait_http(scratch.port, "/health", worker)
        # the README: the web server answers /health and /metrics while it runs
        assert _http(scratch.port, "/health")[0] in (200, 503)
        status, metrics = _http(scratch.port, "/metrics")
        assert status == 200 and b"streamwatch_" in metrics

        # a second worker on the same directory: refused in one line naming the
        # running worker's pid and the variable that moves it elsewhere
        second = scratch.run(_argv(run), {"STREAMWATCH_WEB_PORT": str(free_port())}, timeout=60)
        assert second.returncode == 1, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert f"pid {worker.process.pid}" in line and "STREAMWATCH_DATA_DIR" in line, line

        # followers first (they print alerts from now on), then the traffic
        for follow in _by_role("follow"):
            if "|" in follow.argv:  # `alerts --json | jq .message`
                bar = follow.argv.index("|")
                head = _argv(Command("", follow.argv[:bar]))
                followers.append(scratch.start(head, pipe_to=follow.argv[bar + 1 :]))
            else:
                followers.append(scratch.start(_argv(follow)))
        for follower in followers:  # following before the first alert
            follower.wait_for_stderr("following", 60, "alerts")
        for simulate in _by_role("simulate"):
            done = scratch.run(_argv(simulate) + FAST, timeout=300)
            assert done.returncode == 0, done.stderr
            assert "published" in done.stdout and "impressions" in done.stdout
        for follower in followers:
            if follower.tail is not None:
                continue  # a pipe's tail may buffer until its input ends: checked below
            try:
                follower.wait_for_output(180, "alerts")
            except AssertionError:
                metrics = _http(scratch.port, "/metrics")[1].decode()
                counts = [x for x in metrics.splitlines() if x.startswith("streamwatch_alerts")]
                raise AssertionError(
                    f"{follower.argv}: no output; the worker's alerts: {counts}"
                ) from None
        for follower in followers:
            if follower.tail is not None:  # jq prints each alert's message, a JSON string
                assert follower.stop() == 0
                assert follower.out and all(m.startswith('"') for m in follower.out), follower.out
        for query in _by_role("query"):
            done = scratch.run(_argv(query), timeout=60)
            assert done.returncode == 0, done.stderr
            assert "cmp-002" in done.stdout and "ctr" in done.stdout

        # point 6 against the real worker: resolved alerts have their own sentence
        done = scratch.run([*CLI, "alerts", "--from-beginning", "--json", "--timeout", "8"])
        alerts = [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]
        resolved = [a for a in alerts if a["status"] == "resolved"]
        assert resolved, f"no resolved alert among {len(alerts)}"
        own = {r.name: r.resolved_message for r in DEFAULT_RULES if r.resolved_message}
        for alert in resolved:
            message = alert["message"]
            assert not message.startswith("Resolved:") and "pause readouts" not in message
            # the composed sentence (operators.rules.resolved_sentence), or the rule's own
            # (then the window it cleared in)
            template = own.get(alert["rule"])
            fits_own = template is not None and re.match(
                ".*".join(map(re.escape, re.split(r"\{[^}]*\}", template))), message
            )
            assert fits_own or re.search(r"back to|no longer significant", message), message
    finally:
        try:
            codes = [f.stop() for f in followers]
        finally:  # a follower that will not stop must not leave the worker running
            code = worker.stop(signal.SIGTERM, timeout=150)
    assert codes == [0] * len(codes), codes  # Ctrl-C is how a follower is meant to stop
    assert code == 0, "".join(worker.err)
    assert TRACEBACK not in "".join(worker.out + worker.err)


def test_clear_failures_for_servers_that_do_not_answer(tmp_path: Path) -> None:
    """The README's real-cluster block and the `run` help example, on a machine
    without those servers: one line naming the address and STREAMWATCH_KAFKA, fast."""
    scratch = Scratch(tmp_path)
    cases = [c for c in readme_commands() if c.argv[-1:] == ["run"] and c.env]
    cases += _by_role("unreachable")
    assert len(cases) == 2, [c.text for c in cases]
    for command in cases:
        started = time.monotonic()
        done = scratch.run(_argv(command), command.env, timeout=60)
        took = time.monotonic() - started
        assert done.returncode == 1, done.stderr
        (line,) = done.stderr.strip().splitlines()
        address = command.env["STREAMWATCH_KAFKA"]
        assert address in line and "STREAMWATCH_KAFKA" in line, line
        assert took < 30, f"took {took:.0f} s"
    # and a ClickHouse server that does not answer: its variable, not its password
    dsn = f"http://app:s3cret@127.0.0.1:{free_port()}/streamwatch"
    done = scratch.run([*CLI, "run"], {"STREAMWATCH_CLICKHOUSE": dsn}, timeout=60)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "STREAMWATCH_CLICKHOUSE" in line and "127.0.0.1" in line and "s3cret" not in line


def test_offline_examples(tmp_path: Path) -> None:
    """Examples that need no worker, with the files they name made in the scratch dir."""
    scratch = Scratch(tmp_path)
    (tmp_path / "prod.toml").write_text((ROOT / "deploy" / "streamwatch.example.toml").read_text())
    rows = ["amount,country,prediction,confidence"]
    rows += [f"{10 + i % 50},{'de' if i % 3 else 'fr'},{i % 7 / 7:.3f},0.9" for i in range(300)]
    (tmp_path / "train_sample.csv").write_text("\n".join(rows) + "\n")
    offline = _by_role("offline")
    assert len(offline) == 4, [c.text for c in offline]
    for command in offline:
        done = scratch.run(_argv(command), command.env, timeout=60)
        assert done.returncode == 0, f"{command.text}:\n{done.stderr}"
        assert done.stdout.strip(), command.text
    assert (tmp_path / "ranker.ref.json").is_file()


def test_demo_example(tmp_path: Path) -> None:
    """`streamwatch demo` (its help example), as fast as possible, to its summary."""
    scratch = Scratch(tmp_path)
    (demo,) = [c for c in _by_role("demo") if "--duration" in c.argv]
    done = scratch.run(_argv(demo) + FAST, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "streamwatch demo summary" in done.stdout
    assert "FIRING" in done.stdout  # the injected incidents raised alerts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--incident", "ctr_drop:cmp-003:1200:600:0.2"], "cmp-000..cmp-002"),
        (["simulate", "--incident", "latency_spike:model-7:900:300:3"], "model-0..model-1"),
        (["simulate", "--incident", "ctr_drop:cmp-001:4000:60:0.2"], "--duration"),
    ],
)
def test_simulate_refuses_an_incident_on_nothing(tmp_path: Path, args, message) -> None:
    """Refused before anything connects: usage error (2), one line naming what is valid."""
    done = Scratch(tmp_path).run(CLI + args, timeout=60)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr


def test_unknown_errors_are_one_line_and_verbose_keeps_the_traceback(tmp_path: Path) -> None:
    """`reference build` on a file that is not a table: one line; with -v, the traceback."""
    bad = tmp_path / "x.csv"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    scratch = Scratch(tmp_path)
    argv = ["reference", "build", str(bad), "--model-id", "m", "--version", "1"]
    quiet = subprocess.run(
        CLI + argv, cwd=tmp_path, env=scratch.env(), capture_output=True, text=True, timeout=60
    )
    assert quiet.returncode == 1 and TRACEBACK not in quiet.stderr
    (line,) = quiet.stderr.strip().splitlines()
    assert line.startswith("error:") and "-v" in line
    loud = subprocess.run(
        [*CLI, "-v", *argv],
        cwd=tmp_path,
        env=scratch.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loud.returncode == 1 and TRACEBACK in loud.stderr
