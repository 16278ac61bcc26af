"""Typed wrapper of the Payments contract: deposits, API keys, batch settlement and payouts.

`settle_batch` takes `Record`s whose `key_index`/`pipeline_index` point into the batch's key and
pipeline tables (see `contracts.batch`); `release` needs the batch's pipeline table, which
`batch_pipelines` rebuilds from the `BatchSettled` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from web3 import Web3

from contracts.apikeys import SignedApiKey
from contracts.batch import Leaf, Pipeline, Record, Stage, merkle_proof, merkle_root
from contracts.binding import Binding, Event, TxResult
from contracts.errors import ContractsError
from contracts.rpc import Signer


def settled_leaf(ev: Event) -> Leaf:
    """The batch leaf a RequestSettled event logged."""
    a = ev.args
    return Leaf(bytes(a["request_id"]), bytes(a["key_hash"]), int(a["pipeline_index"]),
                int(a["tokens_in"]), int(a["tokens_out"]), int(a["charge"]), bytes(a["commitment_root"]))


@dataclass(frozen=True)
class KeyState:
    key_hash: bytes
    client: str
    gateway: str
    cap_wei: int
    expiry: int
    spent_wei: int
    revoked: bool


@dataclass(frozen=True)
class BatchInfo:
    batch_id: int
    root: bytes
    release_block: int
    released: bool


@dataclass(frozen=True)
class SettledBatch:
    batch_id: int
    root: bytes
    total_charge: int
    release_block: int
    gas_used: int
    request_ids: list[bytes]
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (seq, SKIP_* reason)


class Payments(Binding):
    """`chain.payments`."""

    # -------------------------------------------------------------- views
    def deposit_of(self, client: str) -> int:
        return int(self._view("deposits", Web3.to_checksum_address(client)))

    def balance_of(self, account: str) -> int:
        return int(self._view("balances", Web3.to_checksum_address(account)))

    def key_state(self, key_hash: bytes) -> KeyState | None:
        t = self._view("keys", key_hash)
        if int(t[0], 16) == 0:
            return None
        return KeyState(key_hash, str(t[0]), str(t[1]), int(t[2]), int(t[3]), int(t[4]), bool(t[5]))

    def batch(self, batch_id: int) -> BatchInfo | None:
        root, pipelines_hash, release_block, _terms = self._view("batches", batch_id)
        if int.from_bytes(bytes(root), "big") == 0:
            return None
        return BatchInfo(
            batch_id,
            bytes(root),
            int(release_block),
            int.from_bytes(bytes(pipelines_hash), "big") == 0,
        )

    def batch_pipelines(self, batch_id: int) -> list[Pipeline]:
        evs = self.events("BatchSettled", batch_id=batch_id)
        if not evs:
            raise ContractsError(f"no BatchSettled event for batch {batch_id}")
        return [
            Pipeline(
                int(p["model_id"]),
                tuple(
                    Stage(str(s["operator"]), int(s["layer_start"]), int(s["layer_end"]))
                    for s in p["stages"]
                ),
            )
            for p in evs[0].args["pipelines"]
        ]

    def settled_leaves(self, batch_id: int) -> list[Leaf]:
        """The batch's records as its RequestSettled events logged them, in batch order."""
        return [settled_leaf(e) for e in self.events("RequestSettled", batch_id=batch_id)]

    def record_proof(self, batch_id: int, request_id: bytes) -> tuple[list[bytes], int, int]:
        """(Merkle proof, leaf index, records in the batch) of request `request_id`, rebuilt from
        the batch's logged records and checked against the batch root stored on chain."""
        leaves = self.settled_leaves(batch_id)
        index = next((i for i, lf in enumerate(leaves) if lf.request_id == request_id), None)
        if index is None:
            raise ContractsError(f"batch {batch_id} has no settled record of request 0x{request_id.hex()}")
        hashes = [lf.hash() for lf in leaves]
        batch = self.batch(batch_id)
        if batch is None or merkle_root(hashes) != batch.root:
            raise ContractsError(f"the {len(hashes)} records the chain logged for batch {batch_id} "
                                 "do not hash to its stored root")
        return merkle_proof(hashes, index), index, len(hashes)

    def is_settled(self, gateway: str, seq: int) -> bool:
        return bool(self._view("is_settled", Web3.to_checksum_address(gateway), seq))

    def request_id(self, gateway: str, seq: int) -> bytes:
        return bytes(self._view("request_id_of", Web3.to_checksum_address(gateway), seq))

    def totals(self) -> dict[str, int]:
        return {
            k: int(self._view(k))
            for k in ("total_deposits", "total_balances", "total_escrow", "verifier_pool",
                      "total_bonds")
        }

    def batch_terms(self, batch_id: int) -> tuple[str, int, int, int]:
        """(gateway, settle block, protocol fee bps, verifier share bps) the batch settled under."""
        g, b, f, v = self._view("batch_terms", batch_id)
        return str(g), int(b), int(f), int(v)

    def gateway_bond(self, gateway: str) -> int:
        return int(self._view("gateway_bond", Web3.to_checksum_address(gateway)))

    def min_gateway_bond(self) -> int:
        """The bond a gateway must hold to settle (one read; `params` reads all seven)."""
        return int(self._view("min_gateway_bond"))

    def params(self) -> dict[str, object]:
        return {
            k: self._view(k)
            for k in (
                "verification_window",
                "protocol_fee_bps",
                "verifier_share_bps",
                "min_gateway_bond",
                "min_charge",
                "verification",
                "fee_recipient",
            )
        }

    # -------------------------------------------------------------- client
    def deposit(self, amount_wei: int, sender: Signer | None = None) -> TxResult:
        return self._send("deposit", sender=sender, value=amount_wei)

    def withdraw_deposit(self, amount_wei: int, sender: Signer | None = None) -> TxResult:
        return self._send("withdraw_deposit", amount_wei, sender=sender)

    def register_key(self, signed: SignedApiKey, sender: Signer | None = None) -> bytes:
        res = self._send("register_key", signed.key.as_tuple(), signed.signature, sender=sender)
        return bytes(res.event("KeyRegistered").args["key_hash"])

    def revoke_key(self, nonce: int, sender: Signer | None = None) -> TxResult:
        return self._send("revoke_key", nonce, sender=sender)

    # -------------------------------------------------------------- gateway
    def bond_gateway(self, amount_wei: int, sender: Signer | None = None) -> TxResult:
        """Register (or top up) the sender as a gateway: only bonded gateways may settle."""
        return self._send("bond_gateway", sender=sender, value=amount_wei)

    def request_gateway_exit(self, sender: Signer | None = None) -> TxResult:
        return self._send("request_gateway_exit", sender=sender)

    def withdraw_gateway_bond(self, sender: Signer | None = None) -> TxResult:
        return self._send("withdraw_gateway_bond", sender=sender)

    def settle_batch(
        self,
        keys: list[bytes],
        pipelines: list[Pipeline],
        records: list[Record],
        sender: Signer | None = None,
    ) -> SettledBatch:
        res = self._send(
            "settle_batch",
            keys,
            [p.as_tuple() for p in pipelines],
            [r.as_tuple() for r in records],
            sender=sender,
        )
        skipped = [(int(e.args["seq"]), int(e.args["reason"])) for e in res.events
                    if e.name == "RecordSkipped"]
        if not any(e.name == "BatchSettled" for e in res.events):
            return SettledBatch(0, bytes(32), 0, 0, res.gas_used, [], skipped)
        ev = res.event("BatchSettled")
        return SettledBatch(
            batch_id=int(ev.args["batch_id"]),
            root=bytes(ev.args["root"]),
            total_charge=int(ev.args["total_charge"]),
            release_block=int(ev.args["release_block"]),
            gas_used=res.gas_used,
            request_ids=[
                bytes(e.args["request_id"]) for e in res.events if e.name == "RequestSettled"
            ],
            skipped=skipped,
        )

    # -------------------------------------------------------------- anyone / roles
    def release(
        self, batch_id: int, pipelines: list[Pipeline] | None = None, sender: Signer | None = None
    ) -> TxResult:
        pl = pipelines if pipelines is not None else self.batch_pipelines(batch_id)
        return self._send("release", batch_id, [p.as_tuple() for p in pl], sender=sender)

    def refund(self, batch_id: int, leaf: Leaf, sender: Signer | None = None) -> TxResult:
        """Verification role only: the record's charge back to its client."""
        return self._send("refund", batch_id, leaf.request_id, leaf.key_hash, leaf.pipeline_index,
                          leaf.charge, sender=sender)

    def pay_verifier(
        self, verifier: str, amount_wei: int, sender: Signer | None = None
    ) -> TxResult:
        return self._send(
            "pay_verifier", Web3.to_checksum_address(verifier), amount_wei, sender=sender
        )

    def withdraw(self, sender: Signer | None = None) -> TxResult:
        return self._send("withdraw", sender=sender)

    def set_params(
        self, verification_window: int, protocol_fee_bps: int, verifier_share_bps: int,
        min_gateway_bond: int | None = None, min_charge: int | None = None,
        sender: Signer | None = None,
    ) -> TxResult:
        """Owner: the verification window (blocks a batch stays escrowed), the fee shares, the
        gateway bond and the minimum charge (unchanged when None). Behind the timelock: `queue`
        the same values first (`queue_params`) unless the delay is zero."""
        args = self._params_args(verification_window, protocol_fee_bps, verifier_share_bps,
                                 min_gateway_bond, min_charge)
        return self._send("set_params", *args, sender=sender)

    def queue_params(
        self, verification_window: int, protocol_fee_bps: int, verifier_share_bps: int,
        min_gateway_bond: int | None = None, min_charge: int | None = None,
        sender: Signer | None = None,
    ) -> TxResult:
        args = self._params_args(verification_window, protocol_fee_bps, verifier_share_bps,
                                 min_gateway_bond, min_charge)
        return self._send("queue", bytes(self._view("params_op", *args)), sender=sender)

    def _params_args(self, window: int, fee: int, ver: int, bond: int | None,
                     min_charge: int | None) -> tuple[int, ...]:
        bond = self.min_gateway_bond() if bond is None else bond
        min_charge = int(self._view("min_charge")) if min_charge is None else min_charge
        return (window, fee, ver, bond, min_charge)

    def set_roles(
        self, verification: str, fee_recipient: str, sender: Signer | None = None
    ) -> TxResult:
        return self._send(
            "set_roles",
            Web3.to_checksum_address(verification),
            Web3.to_checksum_address(fee_recipient),
            sender=sender,
        )
