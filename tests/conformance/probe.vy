# pragma version ~=0.4.3
"""
@title Conformance probe
@notice Tiny contract the JSON-RPC conformance suite deploys on each node.
"""

event ValueSet:
    setter: indexed(address)
    key: indexed(uint256)
    value: uint256

event Deposited:
    sender: indexed(address)
    amount: uint256

owner: public(address)
values: public(HashMap[uint256, uint256])
total: public(uint256)


@deploy
def __init__(initial: uint256):
    self.owner = msg.sender
    self.total = initial


@external
def set_value(key: uint256, amount: uint256):
    assert amount != 0, "probe: amount must be nonzero"
    self.values[key] = amount
    self.total += amount
    log ValueSet(setter=msg.sender, key=key, value=amount)


@external
@payable
def deposit():
    log Deposited(sender=msg.sender, amount=msg.value)


@external
@view
def must_be_owner(who: address) -> bool:
    assert who == self.owner, "probe: not the owner"
    return True


@external
def burn_gas(rounds: uint256) -> uint256:
    acc: uint256 = 0
    for i: uint256 in range(rounds, bound=1000):
        self.values[i] = i + 1
        acc += i
    return acc


@external
@view
def fail_with(payload: Bytes[256]):
    raw_revert(payload)


@external
@view
def fail_silently():
    raise
