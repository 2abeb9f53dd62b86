"""`python -m streams.cli ...`: the `streamwatch` command (the documented, tested entry)."""

from streams.cli import main

main()
