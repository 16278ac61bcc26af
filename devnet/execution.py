"""eth_call and eth_estimateGas: run an unsigned call on top of a block without changing anything.

Calls run in py-evm's "costless" state (base fee and gas price 0, as geth does for calls without
a gas price), so the caller needs a balance only for `value`. A revert becomes `ExecutionReverted`
(code 3) carrying the raw revert bytes in `data` and the decoded `Error(string)` reason in the
message, exactly as anvil answers; other EVM failures become -32000 errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth.abc import BlockHeaderAPI, ComputationAPI
from eth.exceptions import OutOfGas, Revert, VMError
from eth.vm.spoof import SpoofTransaction
from eth_abi import decode as abi_decode

from devnet.chain import DevChain
from devnet.errors import ExecutionReverted, ServerError

ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)


@dataclass(frozen=True)
class CallRequest:
    """The transaction object of eth_call / eth_estimateGas / eth_sendTransaction."""

    sender: bytes = b"\x00" * 20
    to: bytes | None = None
    gas: int | None = None
    value: int = 0
    data: bytes = b""
    nonce: int | None = None
    gas_price: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None


def revert_error(output: bytes) -> ExecutionReverted:
    """The JSON-RPC error for revert bytes `output` (anvil's wording)."""
    message = "execution reverted"
    if output[:4] == ERROR_SELECTOR:
        try:
            (reason,) = abi_decode(["string"], output[4:])
            message = f"execution reverted: {reason}"
        except Exception:
            pass
    elif output[:4] == PANIC_SELECTOR and len(output) == 36:
        message = f"execution reverted: panic: 0x{int.from_bytes(output[4:], 'big'):02x}"
    return ExecutionReverted(message, data="0x" + output.hex())


def _raise_for(error: BaseException) -> None:
    if isinstance(error, Revert):
        raise revert_error(bytes(error.args[0]) if error.args else b"")
    if isinstance(error, OutOfGas):
        raise ServerError(f"out of gas: {error}")
    if isinstance(error, VMError):
        raise ServerError(f"execution failed: {type(error).__name__}: {error}".rstrip(": "))
    raise ServerError(f"execution failed: {error}")


def _spoof(chain: DevChain, req: CallRequest, header: BlockHeaderAPI, gas: int,
           nonce: int) -> SpoofTransaction:
    builder = chain.chain.get_vm(header).get_transaction_builder()
    unsigned = builder.new_unsigned_dynamic_fee_transaction(
        chain_id=chain.chain_id, nonce=nonce, max_priority_fee_per_gas=0, max_fee_per_gas=0,
        gas=gas, to=req.to or b"", value=req.value, data=req.data, access_list=(),
    )
    return SpoofTransaction(unsigned, from_=req.sender)


def _run(chain: DevChain, req: CallRequest, header: BlockHeaderAPI, gas: int) -> ComputationAPI:
    with chain.chain.get_vm(header).in_costless_state() as state:
        nonce = state.get_nonce(req.sender)
        tx = _spoof(chain, req, header, gas, nonce)
        if req.value > state.get_balance(req.sender):
            raise ServerError(
                f"insufficient funds for transfer: address 0x{req.sender.hex()} have "
                f"{state.get_balance(req.sender)} want {req.value}")
        try:
            return state.apply_transaction(tx)
        except VMError as exc:
            _raise_for(exc)
            raise  # unreachable
        except ServerError:
            raise
        except Exception as exc:  # py-evm validation (e.g. intrinsic gas above the cap)
            raise ServerError(f"invalid call: {exc}") from None


def call(chain: DevChain, req: CallRequest, header: BlockHeaderAPI) -> bytes:
    """The return data of `req` executed on top of `header`."""
    computation = _run(chain, req, header, req.gas or header.gas_limit)
    if computation.is_error:
        _raise_for(computation.error)
    return bytes(computation.output)


EXACT_BELOW = 500_000  # heavier calls stop bisecting within 1/64 (each py-evm run takes long)


def estimate_gas(chain: DevChain, req: CallRequest, header: BlockHeaderAPI) -> int:
    """A gas limit with which `req` succeeds on top of `header`: the least one (for calls under
    EXACT_BELOW gas), or at most 1/64 above it.

    One run at the cap measures the gas consumed; that is nearly always enough. If it is not (the
    63/64 rule of nested calls), the limit grows from there in doubling steps until the call
    succeeds, and a bisection then narrows the bracket to 1/64 of the limit — a handful of runs
    instead of a bisection over the whole block gas limit (~25 runs of a heavy call, seconds each
    in py-evm). Clients add their own margin on top, as they do for any node.
    """
    cap = min(req.gas or header.gas_limit, header.gas_limit)
    computation = _run(chain, req, header, cap)
    if computation.is_error:
        _raise_for(computation.error)
    used = cap - computation.get_gas_remaining()
    intrinsic = _spoof(chain, req, header, cap, 0).intrinsic_gas
    used = max(used, intrinsic)

    def ok(gas: int) -> bool:
        try:
            return not _run(chain, req, header, gas).is_error
        except ServerError:
            return False

    if ok(used):
        return used
    lo, step = used, max(used // 32, 1)
    hi = min(used + step, cap)
    while hi < cap and not ok(hi):
        lo, step = hi, step * 2
        hi = min(used + step, cap)
    slack = 1 if hi < EXACT_BELOW else hi // 64
    while hi - lo > slack:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi
