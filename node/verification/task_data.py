"""What a task is about, read from the chain alone: the `open_task` calldata, endpoints, refund proofs.

The TaskOpened event names the checked stage and its commitment but not the rest of the pipeline.
Everything else the contract itself verified when the task was opened — the record, the batch's
pipeline table and every stage's `StageCommit` (their hash is the record's commitment root) — is in
the calldata of the transaction that emitted the event, so the agent decodes that input with the
contract's ABI (no trust in the gateway or in the opener). Stage endpoints come from the
NodeRegistry (`http(s)://host:port`, the data plane's address). A refund needs the record's Merkle
proof in its batch, rebuilt from the batch's RequestSettled events in log order. All functions here
are synchronous chain reads (callers run them in a thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from contracts.batch import Leaf, Pipeline, Stage
from contracts.errors import ContractsError
from node.verification.errors import TaskDataError
from protocol.messages import StageCommit


@dataclass(frozen=True)
class TaskData:
    """One task's request as `open_task` proved it: record, pipeline, and every stage's commit."""

    task_id: int
    batch_id: int
    leaf: Leaf
    proof: tuple[bytes, ...]
    pipeline: Pipeline
    stage_commits: tuple[StageCommit, ...]
    stage: int  # the checked stage (from the event)

    @property
    def request_id(self) -> bytes:
        return self.leaf.request_id

    @property
    def positions(self) -> int:
        return self.stage_commits[self.stage].positions

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple((s.layer_start, s.layer_end) for s in self.pipeline.stages)

    @property
    def layers(self) -> tuple[int, int]:
        return self.ranges[self.stage]


def decode_open_task(task_id: int, stage: int, fn_name: str, args: dict[str, Any]) -> TaskData:
    """TaskData from decoded `open_task(batch_id, record, proof, pipelines, stage_commits)` arguments."""
    if fn_name != "open_task":
        raise TaskDataError(f"task {task_id}: opened by a call to {fn_name}, not open_task")
    try:
        rec = args["record"]
        rec = tuple(rec.values()) if isinstance(rec, dict) else tuple(rec)
        leaf = Leaf(bytes(rec[0]), bytes(rec[1]), int(rec[2]), int(rec[3]), int(rec[4]), int(rec[5]),
                    bytes(rec[6]))
        pipes = [_pipeline(p) for p in args["pipelines"]]
        commits = tuple(_commit(c) for c in args["stage_commits"])
        pipeline = pipes[leaf.pipeline_index]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise TaskDataError(f"task {task_id}: malformed open_task arguments: {e}") from e
    if len(commits) != len(pipeline.stages) or not 0 <= stage < len(commits):
        raise TaskDataError(f"task {task_id}: {len(commits)} stage commits for a "
                            f"{len(pipeline.stages)}-stage pipeline, checked stage {stage}")
    return TaskData(task_id, int(args["batch_id"]), leaf, tuple(bytes(p) for p in args["proof"]),
                    pipeline, commits, stage)


def _pipeline(p: Any) -> Pipeline:
    vals = tuple(p.values()) if isinstance(p, dict) else tuple(p)
    stages = []
    for s in vals[1]:
        sv = tuple(s.values()) if isinstance(s, dict) else tuple(s)
        stages.append(Stage(str(sv[0]), int(sv[1]), int(sv[2])))
    return Pipeline(int(vals[0]), tuple(stages))


def _commit(c: Any) -> StageCommit:
    v = tuple(c.values()) if isinstance(c, dict) else tuple(c)
    return StageCommit(bytes(v[0]), int(v[1]), int(v[2]), int(v[3]))


def load_task_data(chain: Any, task_id: int, stage: int, tx_hash: str) -> TaskData:
    """The TaskData of `task_id`, from the transaction `tx_hash` that emitted its TaskOpened."""
    try:
        fn_name, args = chain.verification.call_of(tx_hash)
    except ContractsError as e:
        raise TaskDataError(f"task {task_id}: {e}") from e
    return decode_open_task(task_id, stage, fn_name, args)


def endpoint_of(chain: Any, operator: str) -> tuple[str, int]:
    """(host, port) of `operator`'s data plane, from its node's registered endpoint URL."""
    reg = chain.node_registry
    owner = reg.owner_of_operator(operator)
    if owner is None:
        raise TaskDataError(f"operator {operator} is not bound to any registered node")
    url = reg.node(owner).endpoint
    return split_endpoint(url)


def split_endpoint(url: str) -> tuple[str, int]:
    """(host, port) of an http(s)://host:port endpoint (the scheme's default port if none)."""
    u = urlparse(url if "://" in url else f"http://{url}")
    try:
        port = u.port
    except ValueError:
        port = None
    if not u.hostname:
        raise TaskDataError(f"endpoint {url!r} names no host")
    return u.hostname, port or (443 if u.scheme == "https" else 80)


def refund_proof(chain: Any, batch_id: int, request_id: bytes) -> list[bytes]:
    """The record's Merkle proof in its batch, rebuilt from the batch's RequestSettled events."""
    try:
        return chain.payments.record_proof(batch_id, request_id)[0]
    except ContractsError as e:
        raise TaskDataError(str(e)) from e
