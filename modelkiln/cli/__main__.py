"""`python -m modelkiln.cli`: the same as the `kiln` command."""

from modelkiln.cli import run

run()
