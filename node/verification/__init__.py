"""The verifier role inside `veriplex node serve`: follow the Verification contract and take part.

`agent.VerifierAgent` follows the contract's tasks from the node's start block through `contracts`
(`Chain` / `Rpc` only) and, with the node's operator key:

- as a committee member of a task on stage j: reads the request's pipeline and stage commitments
  from the `open_task` calldata (`task_data`), fetches stage j-1's rows (or stage 0's tokens) with
  FETCH and checks them against that stage's committed root (`evidence`), re-executes stage j as an
  ordinary OPEN + HIDDEN prefill through a `StageServer` (`rerun`), asks that server for COMMIT,
  fetches the checked stage's claimed rows, judges them with `verifier.tolerance`, then commits,
  reveals and opens its chunks by the deadlines — what it says is decided by its `policy`;
- as the operator of a checked stage: opens its own chunks from its hidden store;
- as keeper (anyone): `close_votes`, `finalize` and `refund_client` when they are due.

Salts and evidence live in a small state directory (`state`) so a restarted node can still reveal
and open. `perturb` is the fault injection of a cheating worker (`--perturb-weights STD`).

Errors (`errors`)::

    AgentError                    root of this package's errors
    ├── TaskDataError             a task's calldata or settlement events cannot be read or do not fit
    ├── EvidenceError             fetched rows or tokens do not reproduce their committed root
    ├── RerunError                the re-execution on a stage server failed or timed out
    └── AgentStateError           the state directory is unreadable or not private

Chain reverts (`contracts.errors.Revert`) from races with other keepers are caught where they can
happen and logged quietly; anything else is logged and the task is retried on the next poll.
"""
