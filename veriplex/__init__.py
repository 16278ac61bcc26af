"""Veriplex: the top-level entry point and the settings every package shares.

`veriplex.config` sits at the bottom of the dependency graph (every package may import it);
`veriplex.cli` sits at the top (it composes each package's subcommands and imports nothing else of
ours at module level). Nothing below imports `veriplex.cli`.
"""

__version__ = "0.1.0"
