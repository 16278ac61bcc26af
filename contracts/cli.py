"""`veriplex contracts ...` subcommands."""

import click


@click.group()
def contracts() -> None:
    """contracts commands."""
