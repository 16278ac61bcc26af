"""A stage unassigned while a request runs through it lets the request finish AND answers the
gateway's COMMIT that follows the last token.

Found with failure reports (tests/up/test_failover.py, two replicas): the coordinator now evicts a
dead worker within seconds, so a replica that loses a stage is dissolved while requests still run
on its survivor; the survivor drained them and stopped at once, and every one of those requests
lost its commitments (recorded with a zero root, charged nothing). The retired stage now lingers
`linger_s` after its last session ends.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from coincurve import PrivateKey

from node.dataplane.client import PipelineClient
from node.dataplane.directory import StaticDirectory
from node.dataplane.follower import Follower
from node.dataplane.hidden_store import HiddenStateStore
from node.dataplane.query import commit_all
from node.dataplane.server import StageServer
from node.runtime.executor import StageExecutor
from node.runtime.shard import load_shard
from protocol.identity import address_of_key
from protocol.messages import AssignmentResponse, PipelineRequest, StageAssignment

PROMPT = [5, 17, 99, 3, 250, 100, 42]
NEW = 120
CHAIN_ID = 31337
GATEWAY_LAG_S = 0.5  # last token → COMMIT at a gateway on a busy machine (the gateway is another process)


def assignment(op: str, epoch: int, rng: tuple[int, int] | None) -> AssignmentResponse:
    a, b = rng or (0, 0)
    return AssignmentResponse(operator=op, epoch=epoch, model_id=1, assigned=rng is not None,
                              layer_start=a, layer_end=b)


@pytest.mark.parametrize("when", ["mid-request", "just after the last token"])
def test_a_retired_stage_still_answers_the_commit_after_the_last_token(
        tiny_llama: Path, tmp_path: Path, when: str) -> None:
    """Retired while the request runs (it drains, then lingers), or a moment after it finished
    (nothing left to drain: it still lingers for the COMMIT on its way)."""
    keys = [PrivateKey(bytes([k + 41]) * 32) for k in range(2)]
    ops = [address_of_key(k) for k in keys]
    gw = PrivateKey(b"\x77" * 32)
    directory = StaticDirectory(ops, [address_of_key(gw)])

    def builder(i: int):  # type: ignore[no-untyped-def]
        def build(rng: tuple[int, int], port: int) -> StageServer:
            store = HiddenStateStore(tmp_path / f"d{i}", 10**8, 600, 600)
            return StageServer(StageExecutor(load_shard(tiny_llama, *rng)), store, keys[i],
                               directory, CHAIN_ID, port=port)
        return build

    async def scenario():  # type: ignore[no-untyped-def]
        fs = [Follower(builder(i), 0, lambda _: None, drain_s=30, linger_s=5)
              for i in range(2)]
        await fs[0].apply(assignment(ops[0], 1, (0, 4)))
        await fs[1].apply(assignment(ops[1], 1, (4, 8)))
        stages = [StageAssignment(operator=ops[i], host="127.0.0.1", port=f.server.port,
                                  start=f.layers[0], end=f.layers[1]) for i, f in enumerate(fs)]
        req = PipelineRequest(chain_id=CHAIN_ID, request_id="0x" + secrets.token_bytes(32).hex(),
                              gateway=address_of_key(gw), stages=stages, prompt_len=len(PROMPT),
                              max_new_tokens=NEW)
        first = asyncio.Event()
        gen = asyncio.ensure_future(PipelineClient(gw, CHAIN_ID).generate(
            req, PROMPT, on_token=lambda i, _: first.set()))
        if when == "mid-request":
            await first.wait()
        else:
            await gen
        # the replica is dissolved: both stages go idle (while the request runs through them)
        idle = asyncio.gather(*[f.apply(assignment(ops[i], 2, None)) for i, f in enumerate(fs)])
        out = await gen
        await asyncio.sleep(GATEWAY_LAG_S)
        P = len(PROMPT) + len(out.tokens) - 1
        commits = await commit_all(gw, CHAIN_ID, req, P, PROMPT + out.tokens, timeout_s=10)
        await idle
        return out, commits, [f.server for f in fs]

    out, commits, servers = asyncio.run(scenario())
    assert len(out.tokens) == NEW  # drained: the request finished on the retiring stages
    assert [c.operator for c in commits] == ops  # and each signed its commitment afterwards
    assert servers == [None, None]  # then they did stop
