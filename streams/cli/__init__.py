"""The command line, the traffic simulator and the demo (`streamwatch ...`).

`commands` (the `streamwatch` command, `main`; `python -m streams.cli` runs it too),
`simulate` (synthetic traffic with switchable incidents), `demo` (everything embedded, in
about a minute), `console` (alerts printed on a terminal). Top of the dependency order:
nothing in `streams.connectors` or `streams.runtime` imports it.
"""

# the console script is `streams.cli:main`, as before the move: an installed `streamwatch`
# keeps working without reinstalling the package
from streams.cli.commands import main

__all__ = ["main"]
