"""``python -m edgeres.cli``."""

from edgeres.cli import main

main()
