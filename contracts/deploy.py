"""Deploy every Veriplex contract over JSON-RPC, wire their roles, and write the manifest.

`deploy_all(rpc_url, private_key, manifest_path, params)` compiles (cached), sends one locally
signed creation transaction per contract in dependency order, then the role-wiring transactions,
and writes the manifest atomically. The deployer becomes admin of every contract. `DeployParams`
holds the economic parameters. The contracts enforce the cross-contract rules (a window long
enough to open every sampled task and void the unopened ones; unbonding at least the window plus
the worst-case task lifetime, else a cheater could leave with its stake before it is judged);
`DeployParams.effective()` raises a configured window or unbonding period that falls short to the
smallest safe value, and the manifest records the values deployed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_abi import encode as abi_encode
from web3 import Web3

from contracts.build import Artifact, compile_all
from contracts.errors import ContractsError
from contracts.manifest import DEPLOY_ORDER, Deployment, Manifest
from contracts.rpc import Rpc, Signer
from contracts.verification import VerificationParams

ETH = 10**18


@dataclass(frozen=True)
class DeployParams:
    """Protocol parameters fixed at deployment (the admin can change most later)."""

    min_stake_wei: int = 1 * ETH
    unbonding_period_blocks: int = 20
    prover_share_bps: int = 5_000  # share of a slash paid to whoever proved the fault
    verification_window_blocks: int = 10
    dispute_blocks: int = 5
    protocol_fee_bps: int = 500
    verifier_share_bps: int = 1_000
    min_gateway_bond_wei: int = 1 * ETH  # a gateway must bond this much to settle
    min_charge_wei: int = 1  # per record: no free record can open a task
    timelock_blocks: int = 0  # owner changes wait this long (0 on devnets; set it in production)
    slasher: str | None = None  # the verification contract; wire later when None
    coordinator: str | None = None  # publishes epochs; the deployer when None
    fee_recipient: str | None = None  # protocol fees; the deployer when None
    verification: VerificationParams = VerificationParams()  # the Verification game's params

    @classmethod
    def from_settings(cls, protocol: Any, **roles: str | None) -> DeployParams:
        """From `Settings.protocol` (protocol.settings.ProtocolSettings) plus optional role addresses."""
        fields = (
            "min_stake_wei",
            "unbonding_period_blocks",
            "prover_share_bps",
            "verification_window_blocks",
            "dispute_blocks",
            "protocol_fee_bps",
            "verifier_share_bps",
            "timelock_blocks",
        )
        return cls(**{f: getattr(protocol, f) for f in fields}, **roles)

    def effective(self) -> DeployParams:
        """These parameters with the window and the unbonding period raised to what the
        verification game needs (`VerificationParams.min_window`, window + task lifetime)."""
        from dataclasses import replace

        v = self.verification
        window = max(self.verification_window_blocks, v.min_window())
        unbonding = max(self.unbonding_period_blocks, window + v.task_lifetime() + 1,
                        window + self.dispute_blocks + 1)
        return replace(self, verification_window_blocks=window, unbonding_period_blocks=unbonding)

    def validate(self) -> None:
        if self.min_stake_wei <= 0:
            raise ContractsError(f"min_stake_wei ({self.min_stake_wei}) must be > 0")
        if self.min_charge_wei <= 0:
            raise ContractsError(f"min_charge_wei ({self.min_charge_wei}) must be > 0")
        if self.unbonding_period_blocks <= self.verification_window_blocks + self.dispute_blocks:
            raise ContractsError(
                f"unbonding_period_blocks ({self.unbonding_period_blocks}) must exceed "
                f"verification_window_blocks + dispute_blocks "
                f"({self.verification_window_blocks} + {self.dispute_blocks})"
            )
        if not 0 <= self.prover_share_bps < 10_000:
            raise ContractsError(
                f"prover_share_bps ({self.prover_share_bps}) must be within 0..9999: part of "
                f"every slash must burn, or slashing oneself would cost nothing"
            )
        for name in ("protocol_fee_bps", "verifier_share_bps"):
            if not 0 <= getattr(self, name) <= 10_000:
                raise ContractsError(f"{name} ({getattr(self, name)}) must be within 0..10000")
        self.verification.validate()
        if self.protocol_fee_bps + self.verifier_share_bps > 10_000:
            raise ContractsError(
                f"protocol_fee_bps + verifier_share_bps ({self.protocol_fee_bps} + "
                f"{self.verifier_share_bps}) must not exceed 10000"
            )


def _abi_type(param: dict[str, Any]) -> str:
    """The canonical type of an ABI parameter, structs spelled out as tuples: `(uint256,bool)[]`."""
    t = str(param["type"])
    if t.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in param["components"]) + ")" + t[len("tuple") :]
    return t


def _deploy_one(rpc: Rpc, signer: Signer, art: Artifact, args: list[Any]) -> tuple[str, int]:
    ctor = next((e for e in art.abi if e.get("type") == "constructor"), None)
    types = [_abi_type(i) for i in ctor["inputs"]] if ctor else []
    if len(types) != len(args):
        raise ContractsError(f"{art.name} takes {len(types)} constructor args, got {len(args)}")
    data = bytes.fromhex(art.bytecode.removeprefix("0x")) + abi_encode(types, args)
    receipt = rpc.transact(signer, None, data)
    address = receipt.get("contractAddress")
    if not address:
        raise ContractsError(f"deploying {art.name} produced no contract address")
    return Web3.to_checksum_address(address), int(receipt["blockNumber"])


def _constructor_args(
    name: str, p: DeployParams, deployed: dict[str, str], deployer: str
) -> list[Any]:
    if name == "NodeRegistry":
        return [p.min_stake_wei, p.unbonding_period_blocks, p.prover_share_bps, p.timelock_blocks]
    if name == "ModelRegistry":
        return [p.timelock_blocks]
    if name == "Scheduler":
        return [deployed["NodeRegistry"], deployed["ModelRegistry"], p.coordinator or deployer]
    if name == "Payments":
        return [
            deployed["NodeRegistry"],
            deployed["ModelRegistry"],
            p.verification_window_blocks,
            p.protocol_fee_bps,
            p.verifier_share_bps,
            p.fee_recipient or deployer,
            p.min_gateway_bond_wei,
            p.min_charge_wei,
            p.timelock_blocks,
        ]
    if name in ("BlockhashRandomness", "SpotCheck", "Committee"):
        return []
    if name == "TaskOpener":
        return [deployed["Payments"], deployed["ModelRegistry"]]
    if name == "Verification":
        return [
            deployed["NodeRegistry"],
            deployed["Payments"],
            deployed["BlockhashRandomness"],
            deployed["SpotCheck"],
            deployed["Committee"],
            deployed["TaskOpener"],
            p.verification.as_tuple(),
            p.timelock_blocks,
        ]
    raise ContractsError(f"no deployment recipe for contract {name!r}")


# Dependency order: a contract's constructor may take addresses of those before it.


def _wire_roles(
    rpc: Rpc, signer: Signer, arts: dict[str, Artifact], addrs: dict[str, str], p: DeployParams
) -> None:
    """The verification role (slasher, refunds, verifier payouts) is one address: the
    Verification contract, unless `p.slasher` names another (tests drive the role by hand)."""
    from contracts.binding import Binding
    from contracts.node_registry import NodeRegistry
    from contracts.payments import Payments

    Binding(rpc, addrs["TaskOpener"], arts["TaskOpener"].abi, signer)._send(
        "wire", addrs["Verification"]
    )
    slasher = p.slasher or addrs["Verification"]
    NodeRegistry(rpc, addrs["NodeRegistry"], arts["NodeRegistry"].abi, signer).set_slasher(slasher)
    Payments(rpc, addrs["Payments"], arts["Payments"].abi, signer).set_roles(
        slasher, p.fee_recipient or signer.address
    )


def deploy_all(
    rpc_url: str, private_key: str, manifest_path: Path, params: DeployParams | None = None
) -> Manifest:
    """Deploy and wire every contract; write and return the manifest."""
    p = (params or DeployParams()).effective()
    p.validate()
    arts = compile_all()
    missing = [n for n in DEPLOY_ORDER if n not in arts]
    if missing:
        raise ContractsError(f"no artifact for {', '.join(missing)}")
    rpc = Rpc(rpc_url)
    signer = Signer.from_key(private_key)
    addrs: dict[str, str] = {}
    deployments: dict[str, Deployment] = {}
    first_block: int | None = None
    for name in DEPLOY_ORDER:
        args = _constructor_args(name, p, addrs, signer.address)
        address, block = _deploy_one(rpc, signer, arts[name], args)
        addrs[name] = address
        deployments[name] = Deployment(address, arts[name].hash, block)
        first_block = block if first_block is None else first_block
    _wire_roles(rpc, signer, arts, addrs, p)
    manifest = Manifest(
        chain_id=rpc.chain_id,
        deployer=signer.address,
        deploy_block=first_block or 0,
        contracts=deployments,
        params={k: v for k, v in asdict(p).items() if v is not None},
    )
    manifest.save(Path(manifest_path))
    return manifest
