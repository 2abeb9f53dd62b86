"""Session fixtures: the real embedded broker (Tansu), started once for the suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.connectors.embedded import EmbeddedBroker

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b
