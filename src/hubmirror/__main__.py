"""`python -m hubmirror` = the `hubmirror` command."""

from .cli import main

main()
