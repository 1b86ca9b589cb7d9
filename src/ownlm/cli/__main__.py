"""`python -m ownlm.cli`: the same command line as the `ownlm` script."""

from ownlm.cli import main

main()
