"""`Chain`: the one place every Veriplex component reaches the chain through.

    chain = Chain.connect("http://127.0.0.1:8545", Path("deployments/devnet.json"), signer=owner)
    chain.node_registry.register(operator, "http://gpu1:9000", hw, stake_wei=2 * ETH)
    info = chain.node_registry.node(owner.address)       # -> NodeInfo

`connect` checks the manifest against the node (chain id, code at every address) so a stale
manifest fails loudly at start rather than as a confusing revert later. Bindings are created on
first use from the compiled artifacts; their ABIs must match the manifest's artifact hashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from contracts.binding import Binding
from contracts.build import Artifact, compile_all
from contracts.errors import ContractsError, ManifestError
from contracts.manifest import Manifest, check_live
from contracts.model_registry import ModelRegistry
from contracts.node_registry import NodeRegistry
from contracts.payments import Payments
from contracts.rpc import Rpc, Signer
from contracts.scheduler import Scheduler
from contracts.verification import Verification

Account.enable_unaudited_hdwallet_features()


def dev_key(index: int, mnemonic: str) -> str:
    """Private key (0x-hex) of dev account `index` of `mnemonic` (m/44'/60'/0'/0/index)."""
    acct = Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(acct.key).hex()


class Chain:
    """A connection to one chain and one deployment of the Veriplex contracts."""

    def __init__(
        self,
        rpc: Rpc,
        manifest: Manifest,
        signer: Signer | None = None,
        artifacts: dict[str, Artifact] | None = None,
    ) -> None:
        self.rpc = rpc
        self.manifest = manifest
        self.signer = signer
        self._artifacts = artifacts
        self._bindings: dict[str, Binding] = {}

    @classmethod
    def connect(
        cls,
        rpc_url: str,
        manifest: Path | Manifest,
        signer: Signer | None = None,
        timeout_s: float = 10.0,
        check: bool = True,
    ) -> Chain:
        rpc = Rpc(rpc_url, timeout_s=timeout_s)
        m = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        if check:
            check_live(rpc, m)
        return cls(rpc, m, signer)

    # -------------------------------------------------------------- basics
    @property
    def chain_id(self) -> int:
        return self.rpc.chain_id

    @property
    def w3(self) -> Web3:
        """The underlying web3 (for the devnet's own tooling; others use the bindings)."""
        return self.rpc.w3

    def block_number(self) -> int:
        return self.rpc.block_number()

    def balance(self, address: str) -> int:
        return self.rpc.balance(address)

    def transfer(self, to: str, amount_wei: int, sender: Signer | None = None) -> dict[str, Any]:
        """Send coin (a plain value transfer)."""
        s = sender or self.signer
        if s is None:
            raise ContractsError("transfer needs a sender: pass sender= or connect a signer")
        return self.rpc.transact(s, to, b"", amount_wei, gas=21_000)

    def with_signer(self, signer: Signer) -> Chain:
        """The same connection and manifest, sending from `signer` by default."""
        return Chain(self.rpc, self.manifest, signer, self._artifacts)

    # -------------------------------------------------------------- bindings
    def _artifact(self, name: str) -> Artifact:
        if self._artifacts is None:
            self._artifacts = compile_all()
        art = self._artifacts[name]
        expected = self.manifest.contracts[name].artifact_hash
        if art.hash != expected:
            raise ManifestError(
                f"{name} at {self.manifest.address(name)} was deployed from artifact {expected[:12]}"
                f" but this checkout builds {art.hash[:12]}: redeploy or use a matching checkout"
            )
        return art

    def _binding(self, name: str, cls: type[Binding]) -> Any:
        b = self._bindings.get(name)
        if b is None:
            b = cls(
                self.rpc,
                self.manifest.address(name),
                self._artifact(name).abi,
                self.signer,
                self.manifest.contracts[name].block,
            )
            self._bindings[name] = b
        return b

    @property
    def node_registry(self) -> NodeRegistry:
        return self._binding("NodeRegistry", NodeRegistry)  # type: ignore[no-any-return]

    @property
    def model_registry(self) -> ModelRegistry:
        return self._binding("ModelRegistry", ModelRegistry)  # type: ignore[no-any-return]

    @property
    def scheduler(self) -> Scheduler:
        return self._binding("Scheduler", Scheduler)  # type: ignore[no-any-return]

    @property
    def payments(self) -> Payments:
        return self._binding("Payments", Payments)  # type: ignore[no-any-return]

    @property
    def verification(self) -> Verification:
        return self._binding("Verification", Verification)  # type: ignore[no-any-return]

    def wire_verification(self, verification: str, sender: Signer | None = None) -> None:
        """Give the verification role (slash, jail, refunds, verifier payouts) to `verification`
        (admin only). Called once the Verification contract is deployed."""
        self.node_registry.set_slasher(verification, sender=sender)
        fee_recipient = str(self.payments.params()["fee_recipient"])
        self.payments.set_roles(verification, fee_recipient, sender=sender)
