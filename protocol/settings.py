"""One typed configuration for every Veriplex component.

Precedence (highest first): explicit overrides passed by the entry point (CLI flags), environment
variables (`VERIPLEX_<SECTION>__<FIELD>`, e.g. `VERIPLEX_CHAIN__RPC_URL`), a TOML file (`--config`,
or `$VERIPLEX_CONFIG`, or `$VERIPLEX_HOME/config.toml` when present), then the defaults below.

The settings are loaded once, at the entry point, and passed down; no module reads `os.environ`.
Each package owns one section; add a section here rather than reading the environment elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The same well-known development mnemonic as anvil and hardhat, so dev accounts match across nodes.
# Never use it for real funds.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


def default_home() -> Path:
    """Where Veriplex keeps state by default: `$VERIPLEX_HOME`, else `~/.veriplex`."""
    env = os.environ.get("VERIPLEX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".veriplex"


class ChainSettings(BaseModel):
    """How every component reaches the chain."""

    rpc_url: str = Field("http://127.0.0.1:8545", description="JSON-RPC endpoint of any EVM node.")
    manifest: Path | None = Field(
        None,
        description="Deployment manifest (JSON). Default: <home>/deployments/<chain id>.json, "
        "falling back to <home>/deployments/devnet.json.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Per-request JSON-RPC timeout in seconds.")
    confirmations: int = Field(0, ge=0, description="Blocks to wait after a receipt before trusting it.")


class DevnetSettings(BaseModel):
    """The embedded py-evm devnet (`veriplex devnet up`)."""

    host: str = Field("127.0.0.1", description="Interface the JSON-RPC server binds to.")
    port: int = Field(8545, ge=0, le=65535, description="TCP port of the JSON-RPC server.")
    db: Path | None = Field(None, description="SQLite file holding the chain. Default: <home>/devnet.sqlite.")
    block_time: float = Field(
        0.0, ge=0, description="Seconds between blocks; 0 mines one block per transaction (instant)."
    )
    chain_id: int = Field(31337, gt=0, description="EIP-155 chain id of the devnet.")
    mnemonic: str = Field(DEV_MNEMONIC, description="BIP-39 mnemonic of the funded dev accounts.")
    accounts: int = Field(10, ge=1, le=1000, description="Number of dev accounts funded at genesis.")
    balance_eth: int = Field(10_000, ge=0, description="Genesis balance of each dev account, in ETH.")
    gas_limit: int = Field(30_000_000, ge=5_000_000, description="Block gas limit.")
    deploy: bool = Field(True, description="Deploy the Veriplex contracts at start if not present.")


class WalletSettings(BaseModel):
    """Keystores of the CLI wallet."""

    keystore_dir: Path | None = Field(None, description="Keystore directory. Default: <home>/keystores.")
    scrypt_n: int = Field(2**18, ge=2**10, description="scrypt N for new keystores (geth default 2^18).")


class ProtocolSettings(BaseModel):
    """Protocol parameters written into the contracts when they are deployed."""

    min_stake_wei: int = Field(10**18, gt=0, description="Least stake (wei) of a schedulable node.")
    unbonding_period_blocks: int = Field(
        20, gt=0, description="Blocks unbonded stake stays slashable; must exceed window + dispute."
    )
    prover_share_bps: int = Field(5_000, ge=0, lt=10_000, description="Share of a slash paid to the prover (rest burned).")
    verification_window_blocks: int = Field(10, gt=0, description="Blocks a settled batch stays in escrow.")
    dispute_blocks: int = Field(5, ge=0, description="Blocks allowed for disputes after the window.")
    protocol_fee_bps: int = Field(500, ge=0, le=10_000, description="Protocol fee on each request's charge.")
    verifier_share_bps: int = Field(1_000, ge=0, le=10_000, description="Verifier pool's share of each charge.")
    timelock_blocks: int = Field(
        0, ge=0, description="Blocks every owner change waits, announced (0 only on devnets: "
        "`contracts deploy --keystore` refuses it).")


class VerificationSettings(BaseModel):
    """The verification game's parameters (written into Verification when it is deployed) and
    the assumptions `veriplex params check` states when it judges them."""

    sample_bps: int = Field(1_000, ge=0, le=10_000, description="Chance (bps) a settled request is checked.")
    committee_size: int = Field(3, ge=1, le=16, description="Verifiers in a task's first round; doubles per escalation.")
    max_rounds: int = Field(2, ge=1, le=3, description="Rounds before a split is decided by the larger agreeing side.")
    commit_blocks: int = Field(4, ge=1, description="Blocks members have to commit their verdicts.")
    reveal_blocks: int = Field(4, ge=1, description="Blocks after the commit phase to reveal them.")
    open_blocks: int = Field(4, ge=1, description="Blocks to open the drawn chunks after the spot randomness.")
    randomness_delay: int = Field(1, ge=1, description="Blocks between an event and the block whose randomness follows it.")
    spot_chunks: int = Field(2, ge=1, le=4, description="Chunks each party opens in a spot check.")
    max_ulp: int = Field(6, ge=0, description="Chunk rule D: scale ulps two values may differ by (BF16 profile).")
    max_bad: int = Field(4, ge=0, le=31, description="Chunk rule K: elements of 32 allowed beyond D.")
    stage_slash_wei: int = Field(10**18, ge=0, description="Slash of a stage operator convicted of a wrong output.")
    verifier_slash_wei: int = Field(2 * 10**17, ge=0, description="Slash of a verifier that hides, withholds or contradicts its evidence.")
    verifier_reward_wei: int = Field(10**15, ge=0, description="A verifier's reward at full agreement with its peers.")
    detection: float = Field(0.99, ge=0.0, le=1.0, description="params check: chance a checked cheat is caught.")
    compute_cost_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="params check: share of an operator's revenue that is compute cost."
    )
    # The verifier agent inside `veriplex node serve` (node/verification/).
    agent_enabled: bool = Field(True, description="Run the verifier agent in `node serve` (with --directory chain).")
    agent_policy: Literal["honest", "lazy", "accuse", "silent"] = Field(
        "honest", description="Verifier behaviour: honest, or a fault-injection policy for tests and demos."
    )
    agent_poll_s: float = Field(0.5, gt=0, description="Seconds between the agent's reads of the chain head.")
    agent_state_dir: Path | None = Field(
        None, description="Where the agent keeps salts and evidence until they are revealed and opened. Default: <home>/verifier/<operator address>."
    )
    agent_start_block: int | None = Field(
        None, ge=0, description="First block whose Verification events the agent reads. Default: where it stopped (its saved cursor), at most agent_catchup_blocks back."
    )
    agent_catchup_blocks: int = Field(
        256, ge=0, description="How far back a (re)started agent looks for tasks opened while it was down."
    )
    agent_job_timeout_s: float = Field(120.0, gt=0, description="Seconds a re-execution may take before it is abandoned.")


class ModelsSettings(BaseModel):
    """Model checkpoints, the stage executor's device, and the node's hidden-state store."""

    dir: Path | None = Field(None, description="Where imported checkpoints live. Default: <home>/models.")
    device: str = Field("auto", description='Torch device for stages: "auto" (CUDA if present), "cpu", "cuda:0".')
    dtype: str = Field(
        "auto", description='Stage dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16".'
    )
    hidden_store_dir: Path | None = Field(
        None, description="Hidden-state store directory. Default: <home>/hidden-states."
    )
    hidden_store_max_bytes: int = Field(
        10 * 2**30, gt=0, description="Disk budget of the hidden-state store; requests beyond it are refused."
    )
    hidden_retention_s: float = Field(
        86_400.0, gt=0, description="Seconds a finished request's hidden states are kept (the verification window)."
    )
    hidden_max_open_s: float = Field(
        3_600.0, gt=0, description="Seconds after which a request never finished is treated as abandoned and evicted."
    )


class DataPlaneSettings(BaseModel):
    """The worker's data-plane server (`veriplex node serve`)."""

    host: str = Field("127.0.0.1", description="Interface the stage server binds to.")
    port: int = Field(7070, ge=0, le=65535, description="TCP port of the stage server (0: any free port).")
    kv_budget_bytes: int = Field(
        2 * 2**30, gt=0, description="KV-cache bytes this stage may reserve; requests beyond it are refused."
    )
    max_frame_bytes: int = Field(64 * 2**20, ge=4096, description="Largest data-plane frame accepted.")
    session_timeout_s: float = Field(60.0, gt=0, description="Idle seconds after which a session is freed.")
    directory_ttl_s: float = Field(10.0, ge=0, description="Seconds a chain operator check is cached.")
    max_decode_rows: int = Field(
        256, ge=1, description="Most decode rows (one per running request) in one batched step."
    )
    prefill_chunk: int = Field(
        256, ge=1, description="Most prefill rows (new prompts, replays, re-executions) in one batched step."
    )
    micro_batches: int = Field(
        0, ge=0, description="Groups the first stage splits its running requests into, circulating round "
        "the ring one after another so every stage computes while the others do (0: as many as the "
        "pipeline has stages; 1 only when stages share cores and each uses all of them)."
    )


class CoordinatorSettings(BaseModel):
    """The coordinator service (`veriplex coordinator run`): scheduling, heartbeats, epochs."""

    host: str = Field("127.0.0.1", description="Interface the coordinator's HTTP API binds to.")
    port: int = Field(7080, ge=0, le=65535, description="TCP port of the HTTP API (0: any free port).")
    model_id: int | None = Field(None, ge=1, description="Model to schedule. Default: the only active one.")
    model_spec: Path | None = Field(
        None, description="Scheduler model JSON (SCHEMAS.md) with the model's shape. Default: "
        "<models dir>/<name>/config.json."
    )
    params_file: Path | None = Field(None, description="Solver params JSON (SCHEMAS.md). Default: built-in.")
    links_file: Path | None = Field(None, description="Region links JSON (SCHEMAS.md). Default: catalogue RTTs.")
    default_rtt_ms: float = Field(100.0, gt=0, description="RTT assumed between regions nothing else knows.")
    heartbeat_timeout_s: float = Field(15.0, gt=0, description="Silence after which a node is evicted.")
    report_silence_s: float = Field(
        6.0, gt=0, description="A node reported failed is evicted before the heartbeat timeout only when "
        "the coordinator's own probes of its data port fail and it has sent no heartbeat for this long "
        "(keep it above two heartbeat periods: a live node's heartbeats must refute a lying report)."
    )
    max_clock_skew_s: float = Field(30.0, gt=0, description="Heartbeat timestamps further off are refused.")
    rebalance_interval_s: float = Field(60.0, gt=0, description="Seconds between global imbalance checks.")
    imbalance_threshold: float = Field(
        0.2, ge=0, lt=1, description="Share of throughput lost that triggers a global re-allocation."
    )
    registry_poll_s: float = Field(5.0, gt=0, description="Seconds between NodeRegistry reads.")
    tick_s: float = Field(0.5, gt=0, description="Seconds between state-machine ticks.")
    max_body_bytes: int = Field(65_536, ge=1024, description="Largest request body accepted.")


class GatewaySettings(BaseModel):
    """The OpenAI-compatible gateway (`veriplex gateway run`): auth, accounting, settlement."""

    host: str = Field("127.0.0.1", description="Interface the gateway's HTTP API binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the HTTP API (0: any free port).")
    db_url: str | None = Field(
        None, description="SQLAlchemy URL of the request/batch store. Default: sqlite:///<home>/gateway.sqlite."
    )
    coordinator_url: str = Field("http://127.0.0.1:7080", description="Coordinator asked for pipelines.")
    model_id: int | None = Field(None, ge=1, description="Model served. Default: the only active one.")
    checkpoint: Path | None = Field(
        None, description="Checkpoint dir (tokenizer, chat template, context). Default: <models dir>/<name>."
    )
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none.")
    batch_size: int = Field(64, ge=1, le=1000, description="Records per settlement batch.")
    batch_max_age_s: float = Field(10.0, gt=0, description="Oldest unbatched record age that cuts a batch.")
    settle_tick_s: float = Field(0.5, gt=0, description="Seconds between settlement passes.")
    chain_cache_s: float = Field(2.0, ge=0, description="Seconds a key/deposit read is reused.")
    step_timeout_s: float = Field(30.0, gt=0, description="Seconds without a token before a stage is presumed dead.")
    failover_wait_s: float = Field(
        30.0, ge=0, description="Seconds a request whose stage failed waits for the coordinator to route "
        "a replacement (it reports the stage, then retries with backoff) before it ends with no_route; keep "
        "it below the stages' session_timeout_s, or the survivors free the request meanwhile."
    )
    exit_after_broadcast: bool = Field(
        False, description="TEST HOOK: exit the process right after a batch is broadcast (crash tests)."
    )
    open_tasks: bool = Field(True, description="Open verification tasks for sampled settled records.")
    commit_timeout_s: float = Field(5.0, gt=0, description="Seconds a stage has to answer COMMIT.")
    commit_attempts: int = Field(3, ge=1, le=10, description="COMMIT tries per stage before a zero root.")


class ExplorerSettings(BaseModel):
    """The block explorer (`veriplex explorer`): indexer and web UI."""

    host: str = Field("127.0.0.1", description="Interface the explorer's web UI binds to.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the web UI (0: any free port).")
    db_url: str | None = Field(
        None, description="SQLAlchemy URL of the index (PostgreSQL or SQLite). Default: "
        "sqlite:///<home>/explorer.sqlite."
    )
    poll_s: float = Field(1.0, gt=0, description="Seconds between polls of the chain head.")
    batch_blocks: int = Field(200, ge=1, description="Most blocks indexed per database commit.")
    page_size: int = Field(25, ge=1, le=500, description="Rows per list on a page.")
    gateway_url: str | None = Field(
        None, description="Base URL of the gateway whose receipts (with the per-stage "
        "commitments and signatures) request pages link to; unset: pages name the path."
    )


class Settings(BaseSettings):
    """All of Veriplex's settings; one section per package."""

    model_config = SettingsConfigDict(
        env_prefix="VERIPLEX_", env_nested_delimiter="__", extra="ignore", toml_file=None
    )

    home: Path = Field(default_factory=default_home, description="Root of Veriplex's local state.")
    chain: ChainSettings = Field(default_factory=ChainSettings, description="Chain access.")
    devnet: DevnetSettings = Field(default_factory=DevnetSettings, description="Embedded devnet.")
    wallet: WalletSettings = Field(default_factory=WalletSettings, description="CLI wallet.")
    protocol: ProtocolSettings = Field(default_factory=ProtocolSettings, description="Deployed protocol parameters.")
    verification: VerificationSettings = Field(
        default_factory=VerificationSettings, description="Verification game parameters."
    )
    models: ModelsSettings = Field(default_factory=ModelsSettings, description="Models, executor, hidden store.")
    dataplane: DataPlaneSettings = Field(default_factory=DataPlaneSettings, description="Worker data plane.")
    coordinator: CoordinatorSettings = Field(
        default_factory=CoordinatorSettings, description="Coordinator service."
    )
    explorer: ExplorerSettings = Field(default_factory=ExplorerSettings, description="Block explorer.")
    gateway: GatewaySettings = Field(default_factory=GatewaySettings, description="OpenAI-compatible gateway.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _toml_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    # Resolved paths: every component asks these, so defaults live in one place.
    @property
    def devnet_db(self) -> Path:
        return self.devnet.db or self.home / "devnet.sqlite"

    @property
    def keystore_dir(self) -> Path:
        return self.wallet.keystore_dir or self.home / "keystores"

    @property
    def models_dir(self) -> Path:
        return self.models.dir or self.home / "models"

    @property
    def hidden_store_dir(self) -> Path:
        return self.models.hidden_store_dir or self.home / "hidden-states"

    @property
    def explorer_db_url(self) -> str:
        return self.explorer.db_url or f"sqlite:///{self.home / 'explorer.sqlite'}"

    @property
    def deployments_dir(self) -> Path:
        return self.home / "deployments"

    def manifest_path(self, chain_id: int | None = None) -> Path:
        """The manifest to read or write: explicit, else per chain id, else the devnet default."""
        if self.chain.manifest is not None:
            return self.chain.manifest
        if chain_id is not None:
            return self.deployments_dir / f"{chain_id}.json"
        return self.deployments_dir / "devnet.json"


_TOML_OVERRIDE: Path | None = None


def _toml_path() -> Path | None:
    if _TOML_OVERRIDE is not None:
        return _TOML_OVERRIDE
    env = os.environ.get("VERIPLEX_CONFIG")
    if env:
        return Path(env).expanduser()
    candidate = default_home() / "config.toml"
    return candidate if candidate.is_file() else None


class ConfigError(ValueError):
    """The configuration file or an override is invalid."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings once, at the entry point. `overrides` are nested dicts per section."""
    global _TOML_OVERRIDE
    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    _TOML_OVERRIDE = Path(config_file) if config_file is not None else None
    try:
        return Settings(**overrides)
    finally:
        _TOML_OVERRIDE = None
