"""Who may take part in a pipeline: the operator directory a stage checks every request against.

A pipeline description names one operator address per stage and the gateway that sent it. Before a
stage admits a request it asks its `OperatorDirectory` whether each named operator may serve and
whether the gateway may send. `ChainDirectory` answers from the NodeRegistry contract (an operator
must be bound to a registered, staked, unjailed node: `is_active`), caching answers for a few
seconds so a busy stage does not hit the RPC per request; `StaticDirectory` is a fixed allow-list
for tests and closed deployments.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from eth_utils import to_checksum_address


class OperatorDirectory(Protocol):
    def operator_ok(self, address: str) -> bool:
        """True if `address` is an operator key allowed to serve stages now."""
        ...

    def gateway_ok(self, address: str) -> bool:
        """True if `address` may open requests on this node."""
        ...


class StaticDirectory:
    """A fixed set of operators and gateways (checksum-insensitive)."""

    def __init__(self, operators: Iterable[str], gateways: Iterable[str] = ()):
        self.operators = {to_checksum_address(a) for a in operators}
        self.gateways = {to_checksum_address(a) for a in gateways}

    def operator_ok(self, address: str) -> bool:
        return to_checksum_address(address) in self.operators

    def gateway_ok(self, address: str) -> bool:
        return to_checksum_address(address) in self.gateways


class ChainDirectory:
    """Operators as the NodeRegistry sees them (`is_active`), cached for `ttl_s` seconds.

    Gateways: if `gateways` is given only those may open requests; otherwise any signer may (the
    request is paid for and settled on chain by the scheduler and payments contracts, not here).
    """

    def __init__(self, chain, ttl_s: float = 10.0, gateways: Iterable[str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.registry = chain.node_registry  # contracts.client.Chain
        self.ttl_s = ttl_s
        self.gateways = None if gateways is None else {to_checksum_address(a) for a in gateways}
        self.clock = clock
        self._cache: dict[str, tuple[float, bool]] = {}

    def operator_ok(self, address: str) -> bool:
        addr = to_checksum_address(address)
        now = self.clock()
        hit = self._cache.get(addr)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        ok = bool(self.registry.is_active(addr))
        self._cache[addr] = (now, ok)
        return ok

    def gateway_ok(self, address: str) -> bool:
        return self.gateways is None or to_checksum_address(address) in self.gateways
