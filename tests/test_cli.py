"""The command line as a user meets it: help, errors, configuration, read-only queries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.cli import main

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = [
    ["demo"],
    ["run"],
    ["simulate"],
    ["query"],
    ["alerts"],
    ["config", "show"],
    ["reference", "build"],
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_config_show_masks_secrets(monkeypatch) -> None:
    monkeypatch.setenv("STREAMWATCH_CLICKHOUSE", "https://app:s3cret@ch.example:8443/streamwatch")
    monkeypatch.setenv("STREAMWATCH_KAFKA_SASL_PASSWORD", "hunter2")
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and "hunter2" not in result.output
    shown = json.loads(result.output)
    assert shown["clickhouse"]["dsn"] == "https://app:***@ch.example:8443/streamwatch"
    assert shown["kafka"]["sasl_password"] == "***"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[ctr]\nwindow_s = 60\n", "unknown field `ctr`"),
        ("web_port = 'x'\n", "Expected `int`"),
        ("[monitors.ctr]\noptions = { window_ms = 0 }\n", None),
        ("[monitors.ctr]\noptions = { no_such_option = 1 }\n", None),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path, toml: str, message: str | None) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    if message is None:  # operator options are checked when monitors are built
        from streams.config import ConfigError, load_settings
        from streams.runtime.monitors import build_monitors

        with pytest.raises(ConfigError, match=r"monitors\.ctr\.options"):
            build_monitors(load_settings(path, env={}))
        return
    result = CliRunner().invoke(main, ["-c", str(path), "config", "show"])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DROP TABLE streamwatch.alerts", "only SELECT and SHOW TABLES are allowed"),
        ("INSERT INTO t SELECT 1", "only SELECT and SHOW TABLES are allowed"),
        ("SELECT 1; DROP TABLE streamwatch.alerts", "Multi-statements are not allowed"),
        ("ALTER TABLE t DELETE WHERE 1", "only SELECT and SHOW TABLES are allowed"),
        # a read by its first word, but it writes a file: judged by the parser now
        ("SELECT 1 INTO OUTFILE 'cli-outfile'", "INTO OUTFILE is not allowed"),
        ("WITH 1 AS x SELECT * FROM file('/etc/passwd')", "table function file()"),
    ],
)
def test_query_refuses_anything_but_reads(tmp_path, sql: str, reason: str) -> None:
    """Without a running worker the CLI opens chDB itself (a child process:
    chDB allows one data directory per process) and judges the same way as
    /api/query (tests/test_web_security.py covers the worker's side)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMWATCH_")}
    env |= {"STREAMWATCH_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "query", sql],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], done.stderr
    assert not (tmp_path / "cli-outfile").exists()


def test_simulate_rejects_a_malformed_incident() -> None:
    result = CliRunner().invoke(main, ["simulate", "--incident", "meteor:x:1:2"])
    assert result.exit_code == 2
    assert "kind must be one of" in result.output


def test_example_configuration_is_valid() -> None:
    from pathlib import Path

    from streams.config import load_settings
    from streams.runtime.monitors import build_monitors

    path = Path(__file__).parent.parent / "deploy" / "streamwatch.example.toml"
    settings = load_settings(path, env={})
    assert {m.name for m in build_monitors(settings)} == {
        "ctr",
        "sensor",
        "cluster",
        "autoencoder",  # on by default (issue 14)
        "drift",
        "service",
        "freshness",
        "srm",
        "quality",
        "experiment",
        "funnel",  # v2: CTR/CVR/revenue guardrails per experiment arm (operators/funnel.py)
        "repartition",  # the forwarder re-keying inputs (streams/runtime/repartition.py)
    }


def test_nested_operator_options_from_toml(tmp_path) -> None:
    from streams.config import load_settings
    from streams.runtime.monitors import build_monitors

    path = tmp_path / "c.toml"
    path.write_text(
        "[change_detection]\noptions = { page_hinkley = { threshold = 20.0 }, "
        'methods = ["adwin", "page_hinkley"] }\n'
    )
    (ctr, *_) = build_monitors(load_settings(path, env={}))
    config = ctr.make_task().changes.config  # type: ignore[union-attr]
    assert config.page_hinkley.threshold == 20.0
    assert config.methods == ("adwin", "page_hinkley")
