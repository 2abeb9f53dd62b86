"""docs/causes.md's example configuration is the one the tests run: it loads as is here,
`tests/test_e2e_causes.py` gives it to a worker, `tests/test_sql_rules.py` runs its rule."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from streams.config import load_settings
from streams.runtime.correlate import correlator_config, retrain_policies

PAGE = Path(__file__).resolve().parents[1] / "docs" / "causes.md"


def example_toml() -> str:
    """The page's one TOML block."""
    (block,) = re.findall(r"```toml\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.DOTALL)
    return block


def example() -> dict[str, Any]:
    return tomllib.loads(example_toml())


def test_the_example_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "streamwatch.toml"
    path.write_text(example_toml())
    settings = load_settings(path, env={})
    (policy,) = retrain_policies(settings)
    assert policy.models == "model-*" and policy.interval_s == 86_400
    assert [(c.metric, c.op, c.threshold, c.for_s) for c in policy.conditions] == [
        ("psi", ">=", 0.2, 120),
        ("error_rate", ">", 0.05, 60),
        ("accuracy_drop", ">", 0.1, 600),
    ]
    assert correlator_config(settings).lookback_ms == 3_600_000
    (rule,) = settings.sql_rules
    assert (rule.name, rule.entity_column, rule.value_column) == (
        "model_errors",
        "model_id",
        "error_count",
    )
    assert "HAVING error_count > 100" in rule.sql


def test_bad_causes_settings_are_refused_with_their_key(tmp_path: Path) -> None:
    import pytest

    from streams.config import ConfigError

    cases = {
        "[[retrain.policies]]\nconditions = []\n": "has no conditions",
        '[[retrain.policies]]\nconditions = [{metric = "psi", op = ">", threshold = 0.2, '
        "for_s = -1}]\n": "for_s must be >= 0",
        '[[retrain.policies]]\nconditions = [{metric = "psi", op = "=", threshold = 0.2}]\n': (
            "retrain.policies[0].conditions[0].op"
        ),
        '[[sql_rules]]\nname = "r"\nsql = "SELECT 1"\nentity_column = "a"\n'
        'value_column = "b"\nop = ">"\nthresholds = {}\n': "thresholds need at least one",
        '[[sql_rules]]\nname = "r"\nsql = "SELECT 1"\nentity_column = "a"\n'
        'value_column = "b"\nop = ">"\nthresholds = {critical = 1}\ninterval_s = 0\n': (
            "interval_s must be > 0"
        ),
    }
    for text, message in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_settings(path, env={})
