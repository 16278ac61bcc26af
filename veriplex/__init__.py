"""Veriplex: the top-level entry point and the settings every package shares.

`protocol.settings` sits at the bottom of the dependency graph (every package may import it);
`veriplex.cli` sits at the top (it composes each package's subcommands and imports nothing else of
ours at module level). Nothing below imports `veriplex.cli`. Beside it, at the same top level,
the commands that compose running processes: `veriplex up` (`up`, `up_setup`, `up_plan`, `stack`)
and `veriplex demo` (`demo`, `demo_main`, `demo_chain`).

Errors (each a clear one-line message; the CLI turns them into `Error: …`; `ConfigError` and
`ListenError` live with the settings and net helpers in `protocol`):
    PlanError(ValueError)       up_plan  a model that cannot be split as asked
    StackError(RuntimeError)    stack    a child that failed to start, died, or would not stop
    UpError(RuntimeError)       up_setup `veriplex up` could not bring a part up (says which)
    DemoFailed(RuntimeError)    demo_main the main scenario could not run a step
    DemoError(RuntimeError)     demo_chain a step of the chain-only scenario failed
"""

__version__ = "0.1.0"
