# pragma version ~=0.4.3
# pragma nonreentrancy off
"""
@title Veriplex node registry
@notice Operators and their stake. A node is identified by its *owner* (cold key): it stakes,
        tops up, unbonds, withdraws and rotates the *operator* (hot key). The operator lives on
        the GPU box; it may update the endpoint and hardware profile but can never move funds.
        Stake must reach `min_stake` for a node to be schedulable; unbonded stake stays
        slashable for `unbonding_period` blocks. Only the verification role slashes; a slash is
        split between the prover and a burn so that slashing oneself never pays. Value leaves the
        contract only through pull payments (`withdraw`, `claim`) behind the reentrancy lock.
        Every stake change is checkpointed (`stake_at`), so committees are drawn from a stake
        snapshot fixed before the randomness that seats them exists. A node that is the stage
        or a member of an open verification task is locked (`lock`/`unlock`, slasher only) and
        cannot withdraw until the task closes. Parameter changes wait out a timelock, and the
        unbonding period must outlast the slasher's worst-case task lifetime.
@dev Invariant kept by every function: self.balance ==
     total_staked + total_unbonding + total_credits.
"""

from snekmate.auth import ownable
from snekmate.auth import ownable_2step

from modules import timelock
from interfaces import ISlasher

initializes: ownable
initializes: ownable_2step[ownable := ownable]
initializes: timelock

exports: (
    ownable.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
    timelock.delay,
    timelock.eta,
)


# ------------------------------------------------------------------ TYPES

struct Hardware:
    gpu: String[64]
    vram_mib: uint256
    tflops_milli: uint256  # TFLOPS x 1000 (no floats on chain)
    mem_bw_gbps: uint256  # GB/s
    net_bw_mbps: uint256  # Mbit/s
    region: String[32]


struct Node:
    operator: address
    endpoint: String[256]
    hardware: Hardware
    stake: uint256
    unbonding: uint256
    unbond_ready_block: uint256
    jailed_until: uint256  # block number; jailed while block.number < jailed_until
    registered_block: uint256
    slashed_total: uint256


# ------------------------------------------------------------------ EVENTS

event NodeRegistered:
    owner: indexed(address)
    operator: indexed(address)
    endpoint: String[256]
    hardware: Hardware
    stake: uint256

event StakeAdded:
    owner: indexed(address)
    amount: uint256
    stake: uint256

event UnbondRequested:
    owner: indexed(address)
    amount: uint256
    stake: uint256
    unbonding: uint256
    ready_block: uint256

event UnbondedWithdrawn:
    owner: indexed(address)
    amount: uint256

event OperatorRotated:
    owner: indexed(address)
    old_operator: indexed(address)
    new_operator: indexed(address)

event EndpointUpdated:
    owner: indexed(address)
    endpoint: String[256]

event HardwareUpdated:
    owner: indexed(address)
    hardware: Hardware

event NodeJailed:
    owner: indexed(address)
    until_block: uint256  # the effective end of the jail term (never shortened)
    by: indexed(address)
    reason: String[128]

event NodeLocked:
    owner: indexed(address)
    locks: uint256  # open tasks holding the node

event NodeUnlocked:
    owner: indexed(address)
    locks: uint256

event NodeUnjailed:
    owner: indexed(address)

event NodeSlashed:
    owner: indexed(address)
    prover: indexed(address)
    amount: uint256
    to_prover: uint256
    burned: uint256
    stake: uint256
    unbonding: uint256
    reason: String[128]

event CreditClaimed:
    account: indexed(address)
    amount: uint256

event SlasherSet:
    slasher: indexed(address)

event ParamsSet:
    min_stake: uint256
    unbonding_period: uint256
    prover_share_bps: uint256


# ------------------------------------------------------------------ STORAGE

BPS: constant(uint256) = 10_000
# Burned coin goes to an address nobody holds a key for.
BURN_ADDRESS: constant(address) = 0x000000000000000000000000000000000000dEaD
STAKE_MASK: constant(uint256) = (1 << 192) - 1

min_stake: public(uint256)
unbonding_period: public(uint256)  # blocks
prover_share_bps: public(uint256)  # share of a slash paid to the prover, rest burned
slasher: public(address)  # the verification contract (set by the admin)

nodes: public(HashMap[address, Node])  # owner -> node
# operator -> owner, permanent: a key once bound to an owner is never reused by another owner,
# so faults signed by a rotated-out key still reach the right stake.
owner_of_operator: public(HashMap[address, address])
node_count: public(uint256)
node_at: public(HashMap[uint256, address])  # index -> owner, for enumeration

credits: public(HashMap[address, uint256])  # pull payments (prover rewards)
locks: public(HashMap[address, uint256])  # open verification tasks the node is part of
# Stake history: owner -> index -> (block << 192 | stake), one per change, in block order.
checkpoints: HashMap[address, HashMap[uint256, uint256]]
checkpoint_count: public(HashMap[address, uint256])
total_staked: public(uint256)
total_unbonding: public(uint256)
total_credits: public(uint256)
total_burned: public(uint256)


# ------------------------------------------------------------------ CONSTRUCTOR

@deploy
@payable
def __init__(
    min_stake_: uint256, unbonding_period_: uint256, prover_share_bps_: uint256,
    timelock_delay_: uint256,
):
    ownable.__init__()
    ownable_2step.__init__()
    timelock.__init__(timelock_delay_)
    self._set_params(min_stake_, unbonding_period_, prover_share_bps_)


# ------------------------------------------------------------------ ADMIN

@external
def set_slasher(slasher_: address):
    """@notice Set the verification role, the only address allowed to slash (once, for good)."""
    ownable._check_owner()
    assert self.slasher == empty(address), "registry: slasher already set"
    assert slasher_ != empty(address), "registry: slasher is the zero address"
    self.slasher = slasher_
    log SlasherSet(slasher=slasher_)


@external
def queue(op: bytes32):
    """@notice Announce a parameter change (`params_op`); it may run after the timelock delay."""
    ownable._check_owner()
    timelock._queue(op)


@external
def set_params(min_stake_: uint256, unbonding_period_: uint256, prover_share_bps_: uint256):
    """@notice Change parameters (queued `params_op(...)` first, unless the delay is zero)."""
    ownable._check_owner()
    timelock._execute(keccak256(abi_encode(min_stake_, unbonding_period_, prover_share_bps_)))
    self._set_params(min_stake_, unbonding_period_, prover_share_bps_)


@pure
@external
def params_op(min_stake_: uint256, unbonding_period_: uint256, prover_share_bps_: uint256) -> bytes32:
    """@notice The operation id `queue` takes for `set_params` with these values."""
    return keccak256(abi_encode(min_stake_, unbonding_period_, prover_share_bps_))


@internal
def _set_params(min_stake_: uint256, unbonding_period_: uint256, prover_share_bps_: uint256):
    assert min_stake_ > 0, "registry: min stake is zero"
    assert unbonding_period_ > 0, "registry: unbonding period is zero"
    # Strictly below 100%: some of every slash burns, so slashing oneself always loses money.
    assert prover_share_bps_ < BPS, "registry: prover share must leave a burn"
    # A node must not be able to leave before the slowest task it can be part of is judged.
    if self.slasher.is_contract:
        need: uint256 = staticcall ISlasher(self.slasher).min_unbonding()
        assert unbonding_period_ >= need, "registry: unbonding shorter than a task's lifetime"
    self.min_stake = min_stake_
    self.unbonding_period = unbonding_period_
    self.prover_share_bps = prover_share_bps_
    log ParamsSet(
        min_stake=min_stake_, unbonding_period=unbonding_period_, prover_share_bps=prover_share_bps_
    )


# ------------------------------------------------------------------ OWNER (cold key)

@external
@payable
def register(operator: address, endpoint: String[256], hardware: Hardware):
    """
    @notice Register the caller as a node owner with `operator` as its hot key, staking msg.value.
    """
    assert self.nodes[msg.sender].registered_block == 0, "registry: already registered"
    assert self.owner_of_operator[msg.sender] == empty(address), "registry: owner is an operator"
    self._check_new_operator(operator)
    assert len(endpoint) > 0, "registry: empty endpoint"
    assert msg.value >= self.min_stake, "registry: stake below minimum"
    self.nodes[msg.sender] = Node(
        operator=operator,
        endpoint=endpoint,
        hardware=hardware,
        stake=msg.value,
        unbonding=0,
        unbond_ready_block=0,
        jailed_until=0,
        registered_block=block.number,
        slashed_total=0,
    )
    self.owner_of_operator[operator] = msg.sender
    self.node_at[self.node_count] = msg.sender
    self.node_count += 1
    self.total_staked += msg.value
    self._checkpoint(msg.sender, msg.value)
    log NodeRegistered(
        owner=msg.sender, operator=operator, endpoint=endpoint, hardware=hardware, stake=msg.value
    )


@external
@payable
def add_stake():
    """@notice Top up the caller's stake with msg.value."""
    self._check_registered(msg.sender)
    assert msg.value > 0, "registry: zero amount"
    new_stake: uint256 = self.nodes[msg.sender].stake + msg.value
    self.nodes[msg.sender].stake = new_stake
    self.total_staked += msg.value
    self._checkpoint(msg.sender, new_stake)
    log StakeAdded(owner=msg.sender, amount=msg.value, stake=new_stake)


@external
def request_unbond(amount: uint256):
    """
    @notice Move `amount` of stake to unbonding; it becomes withdrawable after
            `unbonding_period` blocks and stays slashable until then. A new request restarts
            the timer for everything unbonding.
    """
    self._check_registered(msg.sender)
    assert amount > 0, "registry: zero amount"
    # Read only the fields we need: copying the whole struct would also load the strings.
    stake: uint256 = self.nodes[msg.sender].stake
    assert amount <= stake, "registry: amount exceeds stake"
    stake -= amount
    unbonding: uint256 = self.nodes[msg.sender].unbonding + amount
    ready: uint256 = block.number + self.unbonding_period
    self.nodes[msg.sender].stake = stake
    self.nodes[msg.sender].unbonding = unbonding
    self.nodes[msg.sender].unbond_ready_block = ready
    self.total_staked -= amount
    self.total_unbonding += amount
    self._checkpoint(msg.sender, stake)
    log UnbondRequested(
        owner=msg.sender,
        amount=amount,
        stake=stake,
        unbonding=unbonding,
        ready_block=ready,
    )


@external
@nonreentrant
def withdraw():
    """@notice Send the caller's unbonded stake to the caller once the period has passed."""
    self._check_registered(msg.sender)
    amount: uint256 = self.nodes[msg.sender].unbonding
    assert amount > 0, "registry: nothing unbonding"
    assert block.number >= self.nodes[msg.sender].unbond_ready_block, "registry: still unbonding"
    assert self.locks[msg.sender] == 0, "registry: node is part of an open task"
    self.nodes[msg.sender].unbonding = 0
    self.nodes[msg.sender].unbond_ready_block = 0
    self.total_unbonding -= amount
    log UnbondedWithdrawn(owner=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)


@external
def rotate_operator(new_operator: address):
    """@notice Replace the node's hot key. Only the owner may do this."""
    self._check_registered(msg.sender)
    self._check_new_operator(new_operator)
    old: address = self.nodes[msg.sender].operator
    self.nodes[msg.sender].operator = new_operator
    self.owner_of_operator[new_operator] = msg.sender
    log OperatorRotated(owner=msg.sender, old_operator=old, new_operator=new_operator)


@external
def unjail():
    """@notice Leave jail once its term has passed (the owner decides when to come back)."""
    self._check_registered(msg.sender)
    until: uint256 = self.nodes[msg.sender].jailed_until
    assert until != 0, "registry: not jailed"
    assert block.number >= until, "registry: jail term not over"
    self.nodes[msg.sender].jailed_until = 0
    log NodeUnjailed(owner=msg.sender)


# ------------------------------------------------------------------ OWNER OR OPERATOR

@external
def set_endpoint(node: address, endpoint: String[256]):
    """@notice Update the public endpoint; callable by the node's owner or operator."""
    self._check_owner_or_operator(node)
    assert len(endpoint) > 0, "registry: empty endpoint"
    self.nodes[node].endpoint = endpoint
    log EndpointUpdated(owner=node, endpoint=endpoint)


@external
def set_hardware(node: address, hardware: Hardware):
    """@notice Update the hardware profile; callable by the node's owner or operator."""
    self._check_owner_or_operator(node)
    self.nodes[node].hardware = hardware
    log HardwareUpdated(owner=node, hardware=hardware)


# ------------------------------------------------------------------ VERIFICATION ROLE

@external
def jail(node: address, until_block: uint256, reason: String[128]):
    """@notice Keep `node` out of schedules until `until_block` (slasher or admin)."""
    assert msg.sender == self.slasher or msg.sender == ownable.owner, "registry: caller cannot jail"
    self._check_registered(node)
    assert until_block > block.number, "registry: jail ends in the past"
    until: uint256 = max(until_block, self.nodes[node].jailed_until)
    self.nodes[node].jailed_until = until
    log NodeJailed(owner=node, until_block=until, by=msg.sender, reason=reason)


@external
def lock(node: address):
    """@notice Hold `node`'s funds while a task it is part of is open (slasher only)."""
    assert msg.sender == self.slasher, "registry: caller is not the slasher"
    n: uint256 = self.locks[node] + 1
    self.locks[node] = n
    log NodeLocked(owner=node, locks=n)


@external
def unlock(node: address):
    """@notice Release one hold taken by `lock` (slasher only)."""
    assert msg.sender == self.slasher, "registry: caller is not the slasher"
    n: uint256 = self.locks[node]
    assert n > 0, "registry: node not locked"
    self.locks[node] = n - 1
    log NodeUnlocked(owner=node, locks=n - 1)


@external
def slash(node: address, amount: uint256, prover: address, reason: String[128]) -> uint256:
    """
    @notice Take up to `amount` from the node's stake, then from its unbonding funds; pay
            `prover_share_bps` of it to `prover` (pull) and burn the rest.
    @return The amount actually slashed (never more than the node holds).
    """
    assert msg.sender == self.slasher, "registry: caller is not the slasher"
    self._check_registered(node)
    assert amount > 0, "registry: zero amount"
    assert prover != empty(address), "registry: prover is the zero address"
    stake: uint256 = self.nodes[node].stake
    unbonding: uint256 = self.nodes[node].unbonding
    from_stake: uint256 = min(amount, stake)
    from_unbonding: uint256 = min(amount - from_stake, unbonding)
    taken: uint256 = from_stake + from_unbonding
    assert taken > 0, "registry: nothing to slash"
    stake -= from_stake
    unbonding -= from_unbonding
    self.nodes[node].stake = stake
    self.nodes[node].unbonding = unbonding
    self.nodes[node].slashed_total += taken
    self.total_staked -= from_stake
    self.total_unbonding -= from_unbonding
    self._checkpoint(node, stake)
    # Rounds down, so the prover never gets more than its share.
    to_prover: uint256 = taken * self.prover_share_bps // BPS
    burned: uint256 = taken - to_prover
    self.credits[prover] += to_prover
    self.total_credits += to_prover
    self.total_burned += burned
    log NodeSlashed(
        owner=node,
        prover=prover,
        amount=taken,
        to_prover=to_prover,
        burned=burned,
        stake=stake,
        unbonding=unbonding,
        reason=reason,
    )
    if burned > 0:
        # BURN_ADDRESS has no code, so this call cannot re-enter.
        raw_call(BURN_ADDRESS, b"", value=burned)
    return taken


# ------------------------------------------------------------------ PULL PAYMENTS

@external
@nonreentrant
def claim():
    """@notice Send the caller's credited balance (prover rewards) to the caller."""
    amount: uint256 = self.credits[msg.sender]
    assert amount > 0, "registry: nothing to claim"
    self.credits[msg.sender] = 0
    self.total_credits -= amount
    log CreditClaimed(account=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)


# ------------------------------------------------------------------ VIEWS

@view
@external
def is_active(operator: address) -> bool:
    """@notice True iff `operator` is the current hot key of a staked, unjailed node."""
    return self._is_active(operator)


@view
@external
def node_of(operator: address) -> address:
    """@notice The owner whose *current* operator is `operator`, or the zero address."""
    owner: address = self.owner_of_operator[operator]
    if owner == empty(address) or self.nodes[owner].operator != operator:
        return empty(address)
    return owner


@view
@external
def stake_of(node: address) -> uint256:
    return self.nodes[node].stake


@view
@external
def slashable(node: address) -> uint256:
    """@notice What a slash can still take from the node: stake + unbonding funds."""
    return self.nodes[node].stake + self.nodes[node].unbonding


@view
@external
def registered_at(index: uint256) -> uint256:
    """@notice The registration block of the node at `index` (nondecreasing in the index)."""
    return self.nodes[self.node_at[index]].registered_block


@view
@external
def seat_info(node: address) -> (address, uint256, uint256):
    """@notice (operator, jailed_until, min_stake): what a committee draw needs besides stake_at."""
    return self.nodes[node].operator, self.nodes[node].jailed_until, self.min_stake


@view
@external
def stake_at(node: address, block_number: uint256) -> uint256:
    """@notice The node's stake at the end of block `block_number` (from its checkpoints)."""
    n: uint256 = self.checkpoint_count[node]
    if n == 0 or self.checkpoints[node][0] >> 192 > block_number:
        return 0
    # Binary search for the last checkpoint at or before block_number (at most 2**64 of them).
    lo: uint256 = 0
    hi: uint256 = n - 1
    for _: uint256 in range(64):
        if lo >= hi:
            break
        mid: uint256 = (lo + hi + 1) // 2
        if self.checkpoints[node][mid] >> 192 <= block_number:
            lo = mid
        else:
            hi = mid - 1
    return self.checkpoints[node][lo] & STAKE_MASK


@internal
def _checkpoint(node: address, stake: uint256):
    # Stakes stay far below 2**192 wei. Always appended (several in one block: stake_at takes
    # the last), so the cost never depends on the block a transaction lands in (gas estimates
    # made against the previous block stay right).
    n: uint256 = self.checkpoint_count[node]
    self.checkpoints[node][n] = (block.number << 192) | stake
    self.checkpoint_count[node] = n + 1


@view
@internal
def _is_active(operator: address) -> bool:
    owner: address = self.owner_of_operator[operator]
    if owner == empty(address):
        return False
    return (
        self.nodes[owner].operator == operator
        and self.nodes[owner].stake >= self.min_stake
        and block.number >= self.nodes[owner].jailed_until
    )


@view
@internal
def _check_registered(node: address):
    assert self.nodes[node].registered_block != 0, "registry: not registered"


@view
@internal
def _check_owner_or_operator(node: address):
    self._check_registered(node)
    assert msg.sender == node or msg.sender == self.nodes[node].operator, (
        "registry: caller is not owner or operator"
    )


@view
@internal
def _check_new_operator(operator: address):
    assert operator != empty(address), "registry: operator is the zero address"
    assert operator != msg.sender, "registry: operator must differ from owner"
    assert self.owner_of_operator[operator] == empty(address), "registry: operator already bound"
    # An owner key must stay cold: it cannot double as someone's operator.
    assert self.nodes[operator].registered_block == 0, "registry: operator is a node owner"
