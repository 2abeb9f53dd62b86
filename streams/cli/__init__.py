"""The command line, the traffic simulator and the demo (`streamwatch ...`).

`main` (the `streamwatch` command; `python -m streams.cli` runs it too), `simulate`
(synthetic traffic with switchable incidents), `demo` (everything embedded, in about a
minute), `console` (alerts printed on a terminal). Top of the dependency order: nothing
in `streams.connectors` or `streams.runtime` imports it.
"""
