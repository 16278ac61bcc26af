# pragma version ~=0.4.3
"""
@title Timelock for owner powers
@notice An owner operation (identified by the hash of its arguments) must be queued, then waits
        `delay` blocks before it may run; both steps are logged, so anyone watching has `delay`
        blocks to react (withdraw, stop serving) before a parameter or role changes. A zero
        delay (tests, bootstrapping) lets operations run at once.
@dev The owning contract checks the caller (its owner) before `_queue` and `_execute`.
"""

event OperationQueued:
    op: indexed(bytes32)
    eta: uint256  # first block at which it may run

event OperationExecuted:
    op: indexed(bytes32)


delay: public(uint256)
eta: public(HashMap[bytes32, uint256])  # op -> first block it may run; 0 = not queued


@deploy
def __init__(delay_: uint256):
    self.delay = delay_


@internal
def _queue(op: bytes32):
    assert self.eta[op] == 0, "timelock: already queued"
    e: uint256 = block.number + self.delay
    self.eta[op] = e
    log OperationQueued(op=op, eta=e)


@internal
def _execute(op: bytes32):
    if self.delay != 0:
        e: uint256 = self.eta[op]
        assert e != 0, "timelock: operation not queued"
        assert block.number >= e, "timelock: delay not over"
    self.eta[op] = 0
    log OperationExecuted(op=op)
