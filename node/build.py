"""Build a running node from Settings + options: the one composition function behind `node serve`
and `veriplex up` (which starts `node serve` processes).

`NodeOptions` says what the operator asked for (a fixed layer range or a coordinator to follow, the
operator key, the directory of peers, budgets, the verifier role); `build_node` resolves them against
Settings and the chain into a `Node` whose `run()` serves until SIGINT / SIGTERM. It raises
`NodeConfigError` (a one-line message) for options that cannot work together; the CLI shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.settings import Settings

if TYPE_CHECKING:
    from node.dataplane.server import StageServer


class NodeConfigError(ValueError):
    """Options that cannot work together, or a part of the node that cannot be set up."""


@dataclass(frozen=True)
class NodeOptions:
    """What `node serve` was asked to do (every field but `model` and `key` has a default)."""

    model: Path
    key: bytes = field(repr=False)  # the operator's raw private key: never printed
    layers: tuple[int, int] | None = None  # a fixed range, or None to follow `coordinator`
    coordinator: str | None = None
    model_id: int = 0  # reported in heartbeats
    heartbeat_s: float = 2.0
    host: str | None = None  # default: settings dataplane.host
    port: int | None = None  # default: settings dataplane.port
    chain_id: int | None = None  # default: the chain's (or the devnet's with a static directory)
    directory: str = "chain"  # "chain": NodeRegistry; "static": `allow` + `gateways`
    allow: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    store_dir: Path | None = None  # default: settings hidden_store_dir
    kv_budget_bytes: int | None = None  # default: settings dataplane.kv_budget_bytes
    max_decode_rows: int | None = None  # default: settings dataplane.max_decode_rows
    prefill_chunk: int | None = None  # default: settings dataplane.prefill_chunk
    micro_batches: int | None = None  # default: settings dataplane.micro_batches
    verify: bool | None = None  # default: settings verification.agent_enabled with the chain
    verifier_policy: str | None = None  # default: settings verification.agent_policy
    perturb_std: float = 0.0  # > 0: a deliberately cheating worker (demos, tests)

    def __post_init__(self) -> None:
        if (self.layers is None) == (self.coordinator is None):
            raise NodeConfigError("give exactly one of --layers START:END or --coordinator URL")
        if self.directory not in ("chain", "static"):
            raise NodeConfigError(f"directory {self.directory!r} must be 'chain' or 'static'")
        for name in ("max_decode_rows", "prefill_chunk", "micro_batches"):
            v = getattr(self, name)
            least = 0 if name == "micro_batches" else 1  # 0 micro-batches: one per stage
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                raise NodeConfigError(f"{name} ({v!r}) must be an integer >= {least}")


@dataclass(frozen=True)
class Batching:
    """The continuous-batching knobs of a stage server (see node/dataplane/batcher.py)."""

    max_decode_rows: int = 256
    prefill_chunk: int = 256
    micro_batches: int = 0  # 0: one per stage of the pipeline

    @classmethod
    def resolve(cls, settings: Settings, opts: NodeOptions | None = None) -> Batching:
        """Options where given, else settings dataplane.*."""
        given = {k: getattr(opts, k) for k in ("max_decode_rows", "prefill_chunk", "micro_batches")
                 if opts is not None and getattr(opts, k) is not None}
        dp = settings.dataplane
        return cls(**{"max_decode_rows": dp.max_decode_rows, "prefill_chunk": dp.prefill_chunk,
                      "micro_batches": dp.micro_batches, **given})


def build_server(model: Path, layers: tuple[int, int], key: bytes, directory: Any, chain_id: int,
                 store_dir: Path, settings: Settings, host: str, port: int, kv_budget_bytes: int,
                 perturb_std: float = 0.0, batching: Batching | None = None):
    """Load the shard and wire executor, hidden-state store and server (not started);
    `batching` defaults to settings dataplane.*."""
    from coincurve import PrivateKey

    from node.dataplane.hidden_store import HiddenStateStore
    from node.dataplane.server import StageServer
    from node.runtime.batch import BatchedExecutor
    from node.runtime.shard import load_shard, resolve_device_dtype

    device, dtype = resolve_device_dtype(settings.models.device, settings.models.dtype)
    shard = load_shard(model, layers[0], layers[1], device=device, dtype=dtype)
    if perturb_std > 0:
        from node.verification.perturb import perturb_shard

        n = perturb_shard(shard, perturb_std)
        print(f"WARNING: added N(0, {perturb_std}^2) noise to all {n} weight tensors of layers "
              f"[{layers[0]}, {layers[1]}): this worker serves a perturbed model and will be slashed",
              file=sys.stderr)
    m, dp = settings.models, settings.dataplane
    store = HiddenStateStore(store_dir, m.hidden_store_max_bytes, m.hidden_retention_s, m.hidden_max_open_s)
    b = batching or Batching.resolve(settings)
    return StageServer(BatchedExecutor(shard), store, PrivateKey(key), directory, chain_id, host=host,
                       port=port, kv_budget_bytes=kv_budget_bytes, max_frame_bytes=dp.max_frame_bytes,
                       session_timeout_s=dp.session_timeout_s, max_decode_rows=b.max_decode_rows,
                       prefill_chunk=b.prefill_chunk, micro_batches=b.micro_batches)


def _say(text: str) -> None:
    print(text)
    sys.stdout.flush()


async def _serve(server: StageServer, make_agent: Any = None) -> None:
    try:
        await server.start()
    except OSError as e:  # port in use, address not local
        raise NodeConfigError(f"cannot listen on {server.host}:{server.port}: "
                              f"{e.strerror or e}") from None
    shard = server.executor.shard
    _say(f"serving layers [{shard.start}, {shard.end}) of {shard.checkpoint} on "
         f"{server.host}:{server.port} as {server.address}")
    b = server.batcher
    _say(f"batching: up to {b.max_decode_rows} decode rows and {b.prefill_chunk} prefill rows per step, "
         + (f"{b.micro_batches} micro-batch{'es' if b.micro_batches > 1 else ''}" if b.micro_batches
            else "one micro-batch per pipeline stage"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    agent = None
    if make_agent is not None:
        agent = loop.create_task(make_agent(lambda: [server]).run(stop))
    await stop.wait()
    if agent is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent, 10)
    await server.stop()


async def _follow(build, client, every_s: float, port: int, make_agent=None) -> None:  # type: ignore[no-untyped-def]
    from node.dataplane.follower import Follower

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    follower = Follower(build, port, _say)
    agent = None
    if make_agent is not None:
        agent = loop.create_task(
            make_agent(lambda: [follower.server] if follower.server is not None else []).run(stop))
    await follower.follow(client, every_s, stop)
    if agent is not None:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent, 10)


def agent_state_dir(settings: Settings, key: bytes) -> Path:
    """The verifier agent's state directory: `verification.agent_state_dir` if set, else
    `<home>/verifier/<operator address>` — one per operator, so several nodes may share a home."""
    from coincurve import PrivateKey

    from protocol.identity import address_of_key

    v = settings.verification
    if v.agent_state_dir is not None:
        return Path(v.agent_state_dir)
    return Path(settings.home) / "verifier" / address_of_key(PrivateKey(key)).lower()


def make_agent_factory(settings: Settings, chain: Any, model: Path, key: bytes, directory: Any,
                       chain_id: int, policy: str, budget: int,
                       store_of=None):  # type: ignore[no-untyped-def]
    """`own servers -> VerifierAgent`: the node's verifier, with in-process servers for other ranges.
    `store_of(layers)` is the hidden-store directory this node used for a range (openings of a
    range it no longer serves)."""
    from node.verification.agent import AgentConfig, VerifierAgent
    from node.verification.policy import Policy
    from node.verification.rerun import ServerPool
    from node.verification.state import AgentState

    v = settings.verification
    state_dir = agent_state_dir(settings, key)

    def build(layers: tuple[int, int]) -> Any:
        a, b = layers
        return build_server(model, layers, key, directory, chain_id, state_dir / f"rerun-{a}-{b}",
                            settings, "127.0.0.1", 0, budget)

    def make(own):  # type: ignore[no-untyped-def]
        cfg = AgentConfig(Policy(policy), v.agent_poll_s, v.agent_job_timeout_s, v.agent_start_block,
                          catchup_blocks=v.agent_catchup_blocks)
        from contracts.rpc import Signer

        signed = chain.with_signer(Signer.from_key(key))
        return VerifierAgent(signed, key, ServerPool(own, build), AgentState(state_dir), cfg, say=_say,
                             stores=stores)

    def stores(layers: tuple[int, int]) -> Any:
        from node.dataplane.hidden_store import HiddenStateStore

        path = store_of(layers) if store_of is not None else None
        if path is None or not Path(path).is_dir():
            return None
        m = settings.models
        return HiddenStateStore(path, m.hidden_store_max_bytes, m.hidden_retention_s, m.hidden_max_open_s)

    return make


@dataclass
class Node:
    """A built node: `run()` serves until SIGINT / SIGTERM (fixed range) or follows the coordinator."""

    main: Callable[[], Coroutine[Any, Any, None]]
    warnings: tuple[str, ...] = ()

    def run(self) -> None:
        try:
            import uvloop  # libuv's loop: lower per-frame latency than asyncio's selector loop

            uvloop.run(self.main())
        except ImportError:
            asyncio.run(self.main())


def build_node(settings: Settings, opts: NodeOptions) -> Node:
    """Resolve `opts` against `settings` and the chain; load the shard (fixed range) or prepare to
    follow the coordinator; wire the verifier agent. Nothing listens until `Node.run()`."""
    from node.dataplane.directory import ChainDirectory, StaticDirectory

    dp = settings.dataplane
    verify = opts.verify
    if verify is None:
        verify = settings.verification.agent_enabled and opts.directory == "chain"
    if verify and opts.directory != "chain":
        raise NodeConfigError("the verifier agent needs the chain: use --directory chain or --no-verify")
    key = opts.key
    chain = None
    if opts.directory == "static":
        if not opts.allow:
            raise NodeConfigError("--directory static needs at least one --allow ADDRESS")
        dirx: Any = StaticDirectory(opts.allow, opts.gateways)
        cid = opts.chain_id or settings.devnet.chain_id
    else:
        from contracts.client import Chain
        from contracts.errors import ContractsError

        try:
            chain = Chain.connect(settings.chain.rpc_url, settings.manifest_path(opts.chain_id))
        except ContractsError as e:  # no manifest, chain unreachable
            raise NodeConfigError(str(e)) from None
        gateways: tuple[str, ...] | None = opts.gateways or None
        if gateways and verify:
            from coincurve import PrivateKey

            from protocol.identity import address_of_key

            gateways = (*gateways, address_of_key(PrivateKey(key)))  # the agent opens its checks
        dirx = ChainDirectory(chain, dp.directory_ttl_s, gateways=gateways)
        cid = opts.chain_id or chain.chain_id
    store_dir = opts.store_dir if opts.store_dir is not None else settings.hidden_store_dir
    budget = opts.kv_budget_bytes or dp.kv_budget_bytes
    bind = opts.host or dp.host
    port = dp.port if opts.port is None else opts.port
    rng = opts.layers
    batching = Batching.resolve(settings, opts)
    warnings: list[str] = []
    make_agent = None
    if verify:
        policy = opts.verifier_policy or settings.verification.agent_policy
        root = store_dir
        make_agent = make_agent_factory(
            settings, chain, opts.model, key, dirx, cid, policy, budget,
            (lambda r: root / f"layers-{r[0]}-{r[1]}") if rng is None
            else (lambda r: root if r == rng else None))
        if policy != "honest":
            warnings.append(f"WARNING: verifier policy {policy!r} (fault injection): this node will "
                            "lose stake")
    if rng is None:
        from node.coordinator import HeartbeatClient

        hb = HeartbeatClient(opts.coordinator, cid, key, model_id=opts.model_id)  # type: ignore[arg-type]

        def build(r: tuple[int, int], p: int) -> Any:
            # one store per range: a draining shard and its successor never share a directory
            return build_server(opts.model, r, key, dirx, cid, store_dir / f"layers-{r[0]}-{r[1]}",
                                settings, bind, p, budget, opts.perturb_std, batching)

        return Node(lambda: _follow(build, hb, opts.heartbeat_s, port, make_agent), tuple(warnings))
    from node.runtime.models.errors import ModelError

    try:
        server = build_server(opts.model, rng, key, dirx, cid, store_dir, settings, bind, port,
                              budget, opts.perturb_std, batching)
    except ModelError as e:  # not a checkpoint, a range outside the model, bad tensors
        raise NodeConfigError(str(e)) from None
    return Node(lambda: _serve(server, make_agent), tuple(warnings))
