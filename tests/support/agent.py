"""Helpers of the verifier_agent tests (moved out of their conftest: fixtures stay there)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from coincurve import PrivateKey

CHAIN_ID = 31337


RANGES = [(0, 4), (4, 8)]


def make_server(model: Path, layers: tuple[int, int], key: PrivateKey, directory, store: Path,
                chain_id: int = CHAIN_ID, host: str = "127.0.0.1", port: int = 0, perturb: float = 0.0):
    """A StageServer (not started) as `veriplex node serve` builds one."""
    from node.dataplane.hidden_store import HiddenStateStore
    from node.dataplane.server import StageServer
    from node.runtime.executor import StageExecutor
    from node.runtime.shard import load_shard

    shard = load_shard(model, layers[0], layers[1])
    if perturb:
        from node.verification.perturb import perturb_shard

        perturb_shard(shard, perturb)
    return StageServer(StageExecutor(shard), HiddenStateStore(store, 10**8, 600, 600), key, directory,
                       chain_id, host=host, port=port)


@dataclass
class Ran:
    """A request served by an in-process pipeline, with every stage's signed commitment."""

    request: object
    prompt: list[int]
    generated: list[int]
    commits: list  # node.dataplane.query.SignedStageCommit per stage

    @property
    def sequence(self) -> list[int]:
        return self.prompt + self.generated

    @property
    def positions(self) -> int:
        return len(self.sequence) - 1


async def serve_request(servers, gateway: PrivateKey, prompt: list[int], new_tokens: int,
                        request_id: bytes | None = None, chain_id: int = CHAIN_ID) -> Ran:
    """Run one request through started `servers` (one per stage) as gateway; collect commitments."""
    from node.dataplane.client import PipelineClient
    from node.dataplane.query import commit_all
    from protocol.identity import address_of_key
    from protocol.messages import PipelineRequest, StageAssignment

    rid = request_id or secrets.token_bytes(32)
    stages = tuple(StageAssignment(operator=s.address, host=s.host, port=s.port, start=s.layers[0],
                                   end=s.layers[1]) for s in servers)
    req = PipelineRequest(chain_id=chain_id, request_id="0x" + rid.hex(),
                          gateway=address_of_key(gateway), stages=stages, prompt_len=len(prompt),
                          max_new_tokens=new_tokens)
    gen = await PipelineClient(gateway, chain_id).generate(req, prompt)
    P = len(prompt) + len(gen.tokens) - 1
    commits = await commit_all(gateway, chain_id, req, P, [*prompt, *gen.tokens])
    return Ran(req, list(prompt), list(gen.tokens), commits)
