"""The `hubmirror` command: one console script whose subcommand modules only parse arguments,
call the library (ops/ and the rest) and print."""

from .base import cli


def main() -> None:
    from . import access, history, mirrors, notify, repos, serve  # noqa: F401  (register their commands)

    cli(obj={})


__all__ = ["cli", "main"]
