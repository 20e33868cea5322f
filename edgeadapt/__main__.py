"""`python -m edgeadapt` runs the CLI."""

from edgeadapt.cli import main

main()
