"""API-key checks and spend reservations, done before any work is started.

A bearer token is a client-signed EIP-712 `ApiKey` (`contracts.apikeys`). The gateway accepts it
only if the signature is the client's, it names this gateway, chain and Payments contract, it is
registered on chain, not revoked, not expired, and both the key's remaining cap and the client's
deposit cover the request's upper-bound charge (prompt tokens + max_tokens at registry prices) on
top of what this gateway has already served but not yet settled and what is in flight. Chain reads
are cached for `cache_s`; when the chain cannot be read, a cached state is used if there is one."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from eth_utils import to_checksum_address

from contracts.apikeys import ApiKeyError, SignedApiKey
from contracts.client import Chain
from contracts.errors import ChainError
from contracts.payments import KeyState

from .errors import AuthError, InsufficientFunds, Unavailable


@dataclass
class Reservation:
    key_hash: bytes
    client: str
    amount: int


class Accounts:
    """Authorises keys and tracks per-key and per-client money not yet settled on chain."""

    def __init__(self, chain: Chain, gateway: str, unsettled: dict[bytes, int],
                 cache_s: float = 2.0) -> None:
        self.chain, self.gateway, self.cache_s = chain, to_checksum_address(gateway), cache_s
        self.chain_id = chain.chain_id
        self.payments = to_checksum_address(chain.payments.address)
        self._lock = threading.Lock()
        self._unsettled_key: dict[bytes, int] = dict(unsettled)  # served, not yet settled
        self._unsettled_client: dict[str, int] = {}
        self._inflight_key: dict[bytes, int] = {}
        self._inflight_client: dict[str, int] = {}
        self._clients: dict[bytes, str] = {}
        self._key_cache: dict[bytes, tuple[float, KeyState | None]] = {}
        self._deposit_cache: dict[str, tuple[float, int]] = {}
        self._parsed: dict[str, SignedApiKey] = {}  # token -> checked key (tokens are immutable)

    # ------------------------------------------------------------------ parsing
    def parse(self, authorization: str | None) -> SignedApiKey:
        if not authorization:
            raise AuthError("missing API key: send 'Authorization: Bearer vpx_…' (a key from "
                            "`veriplex client key create`)", "missing_api_key")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <API key>'", "invalid_api_key")
        token = token.strip()
        signed = self._parsed.get(token)
        if signed is None:
            try:
                signed = SignedApiKey.from_token(token)  # signature recovery: ~ms, so cached
            except ApiKeyError as exc:
                raise AuthError(f"invalid API key: {exc}", "invalid_api_key") from None
            if len(self._parsed) >= 10_000:
                self._parsed.clear()
            self._parsed[token] = signed
        if signed.chain_id != self.chain_id or to_checksum_address(signed.payments) != self.payments:
            raise AuthError(f"API key is for chain {signed.chain_id} / Payments {signed.payments}; "
                            f"this gateway is on chain {self.chain_id} / Payments {self.payments}",
                            "invalid_api_key")
        if to_checksum_address(signed.key.gateway) != self.gateway:
            raise AuthError(f"API key names gateway {signed.key.gateway}, not this gateway "
                            f"({self.gateway})", "invalid_api_key")
        return signed

    # ------------------------------------------------------------------ chain reads
    def _fresh(self, cache: dict, k: object) -> bool:
        hit = cache.get(k)
        return hit is not None and time.monotonic() - hit[0] < self.cache_s

    def _cached(self, cache: dict, k: object, read):  # type: ignore[no-untyped-def]
        hit = cache.get(k)
        if self._fresh(cache, k):
            return hit[1]
        try:
            value = read()
        except ChainError as exc:
            if hit is not None:
                return hit[1]  # chain unreachable: fall back on the last reading
            raise Unavailable(f"cannot read the Payments contract right now: {exc}",
                              "chain_unavailable") from None
        cache[k] = (time.monotonic(), value)
        return value

    def cached(self, signed: SignedApiKey) -> bool:
        """Whether `reserve(signed, …)` would read nothing from the chain (fresh cache entries)."""
        kh = signed.key_hash
        if not self._fresh(self._key_cache, kh) or (state := self._key_cache[kh][1]) is None:
            return False
        return self._fresh(self._deposit_cache, to_checksum_address(state.client))

    def invalidate(self) -> None:
        with self._lock:
            self._expire()

    def _expire(self) -> None:
        """Force fresh reads, keeping the old values as the fallback when the chain hangs."""
        for cache in (self._key_cache, self._deposit_cache):
            for k, (_t, v) in list(cache.items()):
                cache[k] = (float("-inf"), v)

    # ------------------------------------------------------------------ authorise
    def reserve(self, signed: SignedApiKey, upper_bound: int) -> Reservation:
        """Check everything and hold `upper_bound` wei against the key and the deposit."""
        kh = signed.key_hash
        state = self._cached(self._key_cache, kh, lambda: self.chain.payments.key_state(kh))
        if state is None:
            raise AuthError("API key is not registered on the Payments contract (register it with "
                            "`veriplex client key create`)", "invalid_api_key")
        if state.revoked:
            raise AuthError("API key was revoked by its client", "revoked_api_key")
        if state.expiry < time.time():
            raise InsufficientFunds(f"API key expired at unix time {state.expiry}", "expired_api_key")
        client = to_checksum_address(state.client)
        deposit = self._cached(self._deposit_cache, client,
                               lambda: self.chain.payments.deposit_of(client))
        with self._lock:
            self._clients[kh] = client
            used_key = self._unsettled_key.get(kh, 0) + self._inflight_key.get(kh, 0)
            left_cap = state.cap_wei - state.spent_wei - used_key
            if upper_bound > left_cap:
                raise InsufficientFunds(
                    f"API key cap exceeded: this request may cost up to {upper_bound} wei; the key "
                    f"has {max(left_cap, 0)} wei left of its {state.cap_wei} wei cap",
                    "key_cap_exceeded")
            used_client = self._unsettled_client.get(client, 0) + self._inflight_client.get(client, 0)
            left_dep = deposit - used_client
            if upper_bound > left_dep:
                raise InsufficientFunds(
                    f"insufficient deposit: this request may cost up to {upper_bound} wei; client "
                    f"{client} has {max(left_dep, 0)} wei available", "insufficient_deposit")
            self._inflight_key[kh] = self._inflight_key.get(kh, 0) + upper_bound
            self._inflight_client[client] = self._inflight_client.get(client, 0) + upper_bound
        return Reservation(kh, client, upper_bound)

    def finish(self, r: Reservation, charge: int | None) -> None:
        """Release a reservation; `charge` (if served) stays held until its batch settles."""
        with self._lock:
            self._inflight_key[r.key_hash] -= r.amount
            self._inflight_client[r.client] -= r.amount
            if charge:
                self._unsettled_key[r.key_hash] = self._unsettled_key.get(r.key_hash, 0) + charge
                self._unsettled_client[r.client] = self._unsettled_client.get(r.client, 0) + charge

    def settled(self, charges: list[tuple[bytes, int]]) -> None:
        """A batch landed: its charges now show in the chain's `spent` and deposit."""
        with self._lock:
            for kh, charge in charges:
                self._unsettled_key[kh] = self._unsettled_key.get(kh, 0) - charge
                client = self._clients.get(kh)
                if client is not None and client in self._unsettled_client:
                    self._unsettled_client[client] = max(0, self._unsettled_client[client] - charge)
            self._expire()
