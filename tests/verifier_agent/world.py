"""A small Veriplex world on a real devnet for the agent's tests: contracts deployed with short
verification phases, nodes registered and staked as operators do, each with an in-process
StageServer (optionally perturbed) and a `VerifierAgent` (with a policy); a paying client and a
gateway that serves one request through the first stages, settles it and opens its task."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from coincurve import PrivateKey
from eth_account import Account

from contracts.apikeys import create_api_key
from contracts.batch import Pipeline, Record, Stage, leaves_of, merkle_proof, request_id
from contracts.client import Chain, dev_key
from contracts.deploy import DeployParams, deploy_all
from contracts.node_registry import Hardware
from contracts.rpc import Rpc, Signer
from contracts.verification import VerificationParams, commitment_root
from node.dataplane.directory import ChainDirectory
from node.verification.agent import AgentConfig, VerifierAgent
from node.verification.policy import Policy
from node.verification.rerun import ServerPool
from node.verification.state import AgentState
from protocol.settings import DEV_MNEMONIC
from tests.support.agent import make_server, serve_request
from tests.support.chain import ETH

HW = Hardware("cpu", 0, 1_000, 10, 1_000, "local")
PRICE_IN, PRICE_OUT = 10**9, 2 * 10**9


def params(**kw) -> VerificationParams:
    base = dict(sample_bps=10_000, committee_size=2, max_rounds=1, commit_blocks=60, reveal_blocks=60,
                open_blocks=60, randomness_delay=1, spot_chunks=2, stage_slash_wei=ETH // 2,
                verifier_slash_wei=ETH // 10, verifier_reward_wei=10**12)
    base.update(kw)
    return VerificationParams(**base)


class Miner:
    """Mines an empty block every `every_s` (the devnet mines transactions instantly; deadlines
    counted in blocks also need time to pass)."""

    def __init__(self, url: str, every_s: float = 0.35) -> None:
        self.rpc, self.every_s = Rpc(url), every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                self.rpc.mine()
            except Exception:
                pass

    def __enter__(self) -> Miner:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)


@dataclass
class NodeSpec:
    layers: tuple[int, int]
    policy: Policy = Policy.HONEST
    perturb: float = 0.0
    rerun: bool = True  # False: its agent has no stage server to re-execute on (and loads none)


@dataclass
class Node:
    spec: NodeSpec
    owner: Signer
    key: PrivateKey
    server: object = None
    agent: VerifierAgent | None = None

    @property
    def operator(self) -> str:
        from protocol.identity import address_of_key

        return address_of_key(self.key)


@dataclass
class Opened:
    task_id: int
    batch_id: int
    client: Signer
    charge: int
    deposit_before_refund: int
    open_block: int


@dataclass
class World:
    url: str
    manifest: Path
    model: Path
    tmp: Path
    chain: Chain
    nodes: list[Node] = field(default_factory=list)

    @classmethod
    def deploy(cls, url: str, model: Path, tmp: Path, vparams: VerificationParams) -> World:
        manifest = tmp / "manifest.json"
        deploy_all(url, dev_key(0, DEV_MNEMONIC), manifest,
                   DeployParams(verification_window_blocks=400, unbonding_period_blocks=1000,
                                verification=vparams))
        chain = Chain.connect(url, manifest, signer=Signer.from_key(dev_key(0, DEV_MNEMONIC)))
        return cls(url, manifest, model, tmp, chain)

    def fresh(self, eth: int = 10) -> Signer:
        s = Signer(Account.create())
        self.chain.transfer(s.address, eth * ETH)
        return s

    async def start_nodes(self, specs: list[NodeSpec]) -> None:
        """Servers first (their ports are the registered endpoints), then register and stake."""
        directory = ChainDirectory(self.chain, ttl_s=0.0)
        for i, spec in enumerate(specs):
            key = PrivateKey(secrets.token_bytes(32))
            node = Node(spec, self.fresh(), key)
            node.server = make_server(self.model, spec.layers, key, directory, self.tmp / f"store-{i}",
                                      chain_id=self.chain.chain_id, perturb=spec.perturb)
            await node.server.start()
            # The operator key pays the gas of its verification transactions.
            await asyncio.to_thread(self.chain.transfer, node.operator, ETH)
            await asyncio.to_thread(self.chain.node_registry.register, node.operator,
                                    f"http://127.0.0.1:{node.server.port}", HW, ETH, sender=node.owner)
            self.nodes.append(node)

    def start_agents(self, start_block: int, poll_s: float = 0.2) -> None:
        for i in range(len(self.nodes)):
            self.start_agent(i, start_block, poll_s=poll_s)

    def start_agent(self, i: int, start_block: int | None, policy: Policy | None = None,
                    poll_s: float = 0.2) -> VerifierAgent:
        """A (new) agent for node `i`; its state directory is the node's, kept across restarts."""
        node = self.nodes[i]
        directory = ChainDirectory(self.chain, ttl_s=0.0)
        chain = Chain.connect(self.url, self.manifest, signer=Signer.from_key(node.key.secret))

        def build(layers, key=node.key, i=i):
            return make_server(self.model, layers, key, directory, self.tmp / f"rerun-{i}-{layers[0]}",
                               chain_id=self.chain.chain_id)

        pool = ServerPool(lambda s=node.server: [s], build) if node.spec.rerun else ServerPool(list, None)
        node.agent = VerifierAgent(chain, node.key.secret, pool, AgentState(self.tmp / f"agent-{i}"),
                                   AgentConfig(policy or node.spec.policy, poll_s, 60.0, start_block))
        return node.agent

    async def request_and_open(self, pipeline_nodes: list[Node], prompt: list[int], new_tokens: int,
                               seq: int = 1) -> Opened:
        """Serve a request as gateway through `pipeline_nodes`, settle it, open its task."""
        ch = self.chain
        client, gateway = self.fresh(), self.fresh()
        await asyncio.to_thread(ch.payments.deposit, ETH, sender=client)
        signed = create_api_key(bytes(client.account.key), gateway.address, ETH, int(time.time()) + 3600,
                                1, ch.chain_id, ch.payments.address)
        key = await asyncio.to_thread(ch.payments.register_key, signed, sender=gateway)
        bond = int(ch.payments.params()["min_gateway_bond"])  # only bonded gateways settle
        await asyncio.to_thread(ch.payments.bond_gateway, bond, sender=gateway)
        layers = pipeline_nodes[-1].spec.layers[1]
        model_id = await asyncio.to_thread(ch.model_registry.register_model, f"tiny-{time.time_ns()}",
                                           layers, 256, b"\x01" * 32, b"\x02" * 32, PRICE_IN, PRICE_OUT)
        rid = request_id(ch.chain_id, ch.payments.address, gateway.address, seq)
        ran = await serve_request([n.server for n in pipeline_nodes], PrivateKey(bytes(gateway.account.key)),
                                  prompt, new_tokens, request_id=rid, chain_id=ch.chain_id)
        sc = [c.commit for c in ran.commits]
        pipeline = Pipeline(model_id, tuple(Stage(n.operator, *n.spec.layers) for n in pipeline_nodes))
        tin, tout = len(ran.prompt), len(ran.generated)
        charge = tin * PRICE_IN + tout * PRICE_OUT
        record = Record(seq, 0, 0, tin, tout, charge, commitment_root(sc))
        settled = await asyncio.to_thread(ch.payments.settle_batch, [key], [pipeline], [record], sender=gateway)
        leaf = leaves_of(ch.chain_id, ch.payments.address, gateway.address, [key], [record])[0]
        proof = merkle_proof([leaf.hash()], 0)
        ver = ch.verification
        deadline = time.monotonic() + 30
        while True:  # the batch's randomness is a later block's hash
            try:
                if await asyncio.to_thread(ver.is_sampled, settled.batch_id, rid):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the batch's sampling randomness never became available")
            await asyncio.sleep(0.2)
        # the chosen stage's signed commitment is checked on chain when the task opens
        stage = await asyncio.to_thread(ver.stage_of, settled.batch_id, rid, len(sc))
        task_id, tx = await asyncio.to_thread(ver.open_task, settled.batch_id, leaf, proof, [pipeline], sc,
                                              ran.commits[stage].signature, sender=client)
        return Opened(task_id, settled.batch_id, client, charge,
                      await asyncio.to_thread(ch.payments.deposit_of, client.address), tx.block_number)

    async def run_until(self, task_id: int, done, timeout_s: float = 90.0):
        """Run every node's agent until `done(task)` holds (called in a thread: it may read the
        chain); returns that TaskInfo."""
        stop = asyncio.Event()
        runs = [asyncio.get_running_loop().create_task(n.agent.run(stop)) for n in self.nodes if n.agent]
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                t = await asyncio.to_thread(self.chain.verification.task, task_id)
                if await asyncio.to_thread(done, t):
                    return t
                if time.monotonic() > deadline:
                    notes = [e for n in self.nodes if n.agent for e in n.agent.events]
                    raise TimeoutError(f"task {task_id} stuck at {t}; agents did: {notes}")
                for r in runs:
                    if r.done() and r.exception():
                        raise r.exception()
                await asyncio.sleep(0.25)
        finally:
            stop.set()
            await asyncio.gather(*runs, return_exceptions=True)

    async def stop(self) -> None:
        for n in self.nodes:
            if n.server is not None:
                await n.server.stop()

    def events(self, name: str, from_block: int) -> list:
        return self.chain.verification.events(name, from_block=from_block)
