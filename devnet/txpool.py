"""Admission of signed transactions: decode, check like geth does, queue future nonces.

Every refusal is a JSON-RPC error with geth's wording (``nonce too low``, ``insufficient funds for
gas * price + value``, ``intrinsic gas too low``, ...) raised BEFORE anything touches the chain, so
a refused transaction leaves no trace. A transaction whose nonce is ahead of its sender's is held
in a small per-sender queue (as anvil does) and applied as soon as the gap closes, so pipelined
clients that send over several connections at once never see spurious nonce errors.
"""

from __future__ import annotations

import logging

from eth.abc import SignedTransactionAPI

from devnet.chain import DevChain
from devnet.errors import InvalidParams, ServerError

log = logging.getLogger(__name__)

MAX_QUEUED_PER_SENDER = 64
MAX_QUEUED = 1024


class TxPool:
    """Checks and submits transactions to a `DevChain`."""

    def __init__(self, chain: DevChain) -> None:
        self.chain = chain
        self.queued: dict[bytes, dict[int, SignedTransactionAPI]] = {}

    def decode(self, raw: bytes) -> SignedTransactionAPI:
        if not raw:
            raise InvalidParams("empty raw transaction")
        if raw[0] == 3:
            raise ServerError("blob (type 3) transactions are not supported by the devnet")
        builder = self.chain.chain.get_vm().get_transaction_builder()
        try:
            return builder.decode(raw)
        except Exception as exc:
            raise InvalidParams(f"failed to decode signed transaction: {exc}") from None

    def submit(self, tx: SignedTransactionAPI) -> bytes:
        """Check `tx`, then apply it (or queue it if its nonce is ahead). Returns its hash."""
        sender = self._sender(tx)
        self._check_static(tx)
        if tx.hash in self.chain.pending or any(
            q.get(tx.nonce) is not None and q[tx.nonce].hash == tx.hash for q in self.queued.values()
        ):
            raise ServerError("already known")
        state = self.chain.state_at(self.chain.pending_header)
        expected = state.get_nonce(sender)
        if tx.nonce < expected:
            raise ServerError(f"nonce too low: next nonce {expected}, tx nonce {tx.nonce}")
        if tx.nonce > expected:
            self._queue(sender, tx, expected)
            return tx.hash
        self._check_funds(sender, tx, state.get_balance(sender))
        self._apply(tx)
        self._drain(sender)
        return tx.hash

    # -- checks -------------------------------------------------------------------------------
    @staticmethod
    def _sender(tx: SignedTransactionAPI) -> bytes:
        try:
            tx.check_signature_validity()
            return tx.sender
        except Exception as exc:
            raise ServerError(f"invalid sender: bad transaction signature ({exc})") from None

    def _check_static(self, tx: SignedTransactionAPI) -> None:
        chain_id = tx.chain_id
        if chain_id is not None and chain_id != self.chain.chain_id:
            raise ServerError(
                f"invalid chain id: transaction has {chain_id}, the devnet is {self.chain.chain_id}"
            )
        intrinsic = tx.intrinsic_gas
        if tx.gas < intrinsic:
            raise ServerError(f"intrinsic gas too low: gas {tx.gas}, minimum needed {intrinsic}")
        header = self.chain.pending_header
        if tx.gas > header.gas_limit:
            raise ServerError(f"exceeds block gas limit: gas {tx.gas}, block gas limit {header.gas_limit}")
        base_fee = header.base_fee_per_gas
        if tx.type_id in (None, 1):
            if tx.gas_price < base_fee:
                raise ServerError(
                    f"transaction underpriced: gas price {tx.gas_price} < block base fee {base_fee}")
        else:
            if tx.max_priority_fee_per_gas > tx.max_fee_per_gas:
                raise ServerError(
                    f"max priority fee per gas higher than max fee per gas: maxPriorityFeePerGas "
                    f"{tx.max_priority_fee_per_gas}, maxFeePerGas {tx.max_fee_per_gas}")
            if tx.max_fee_per_gas < base_fee:
                raise ServerError(
                    f"max fee per gas less than block base fee: maxFeePerGas {tx.max_fee_per_gas}, "
                    f"baseFee {base_fee}")

    def _check_funds(self, sender: bytes, tx: SignedTransactionAPI, balance: int | None = None) -> None:
        price = tx.gas_price if tx.type_id in (None, 1) else tx.max_fee_per_gas
        cost = tx.gas * price + tx.value
        if balance is None:
            balance = self.chain.state_at(self.chain.pending_header).get_balance(sender)
        if cost > balance:
            raise ServerError(
                f"insufficient funds for gas * price + value: address 0x{sender.hex()} "
                f"have {balance} want {cost}")

    # -- apply and queue ----------------------------------------------------------------------
    def _apply(self, tx: SignedTransactionAPI) -> None:
        try:
            self.chain.apply(tx)
        except ServerError:
            raise
        except Exception as exc:  # py-evm's own validation: still a refusal, chain unchanged
            raise ServerError(f"transaction rejected: {exc}") from None

    def _queue(self, sender: bytes, tx: SignedTransactionAPI, expected: int) -> None:
        mine = self.queued.setdefault(sender, {})
        if len(mine) >= MAX_QUEUED_PER_SENDER or sum(map(len, self.queued.values())) >= MAX_QUEUED:
            raise ServerError(
                f"nonce too high: next nonce {expected}, tx nonce {tx.nonce}, and the queue of "
                f"future transactions is full")
        mine[tx.nonce] = tx

    def _drain(self, sender: bytes) -> None:
        mine = self.queued.get(sender)
        if not mine:
            return
        while mine:
            tx = mine.pop(self.chain.pending_nonce(sender), None)
            if tx is None:
                break
            try:
                self._check_static(tx)
                self._check_funds(sender, tx)
                self._apply(tx)
            except ServerError as exc:
                log.warning("dropped queued transaction 0x%s: %s", tx.hash.hex(), exc.message)
        if mine:
            nonce = self.chain.pending_nonce(sender)
            for stale in [n for n in mine if n < nonce]:
                del mine[stale]
        if mine is not None and not mine:
            self.queued.pop(sender, None)

    def clear(self) -> None:
        self.queued.clear()
