"""`veriplex devnet ...` subcommands."""

import click


@click.group()
def devnet() -> None:
    """devnet commands."""
