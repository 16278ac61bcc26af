# pragma version ~=0.4.3
"""
@title Veriplex committee sortition (stateless)
@notice Draws a verification committee from the NodeRegistry by stake as it stood at a snapshot
        block fixed before the seed existed (`stake_at`), so nothing a node does once the seed
        is public (top up, unbond, register) changes who sits. Rejection sampling over every
        registered node: pick a node uniformly from the seed, seat it with probability
        min(stake, seat_stake) / seat_stake. There is no cap on how many nodes can verify; each
        draw costs a bounded number of tries whatever the registry's size. A node is eligible
        iff its snapshot stake reaches the minimum, it is not jailed now (only the slasher jails)
        and it is not excluded (the stage under check, its input stage, earlier members).
@dev Kept apart from Verification so both fit EIP-170.
"""

from interfaces import ICommitteeRegistry

MAX_COMMITTEE: constant(uint256) = 16
MAX_EXCLUDED: constant(uint256) = 40
MAX_TRIES: constant(uint256) = 256


@view
@external
def draw(
    registry: ICommitteeRegistry, seed: bytes32, snapshot_block: uint256, want: uint256,
    seat_stake: uint256, exclude: DynArray[address, MAX_EXCLUDED],
) -> (DynArray[address, MAX_COMMITTEE], DynArray[address, MAX_COMMITTEE], DynArray[uint256, MAX_COMMITTEE]):
    """
    @notice Up to `want` seats: (operators, owners, snapshot stakes). Fewer when the tries run
            out (a registry of mostly empty slots), never a node twice.
    """
    ops: DynArray[address, MAX_COMMITTEE] = []
    owners: DynArray[address, MAX_COMMITTEE] = []
    stakes: DynArray[uint256, MAX_COMMITTEE] = []
    # Only nodes registered by the snapshot block count, so that registering once the seed is
    # public cannot move the uniform pick (indexes are in registration order).
    n: uint256 = staticcall registry.node_count()
    if n == 0 or seat_stake == 0 or want == 0:
        return ops, owners, stakes
    if staticcall registry.registered_at(n - 1) > snapshot_block:
        lo: uint256 = 0
        hi: uint256 = n - 1  # first index registered after the snapshot is in [lo, hi]
        for _: uint256 in range(64):
            if lo >= hi:
                break
            mid: uint256 = (lo + hi) // 2
            if staticcall registry.registered_at(mid) > snapshot_block:
                hi = mid
            else:
                lo = mid + 1
        n = lo
        if n == 0:
            return ops, owners, stakes
    for k: uint256 in range(MAX_TRIES):
        if len(ops) >= want:
            break
        w: uint256 = convert(keccak256(abi_encode(seed, k)), uint256)
        owner: address = staticcall registry.node_at(w % n)
        if owner in exclude or owner in owners:
            continue
        stake: uint256 = staticcall registry.stake_at(owner, snapshot_block)
        op: address = empty(address)
        jailed_until: uint256 = 0
        min_stake: uint256 = 0
        op, jailed_until, min_stake = staticcall registry.seat_info(owner)
        if stake < min_stake or block.number < jailed_until:
            continue
        # Seat with probability min(stake, seat_stake) / seat_stake (upper bits of the word).
        if (w >> 128) % seat_stake >= min(stake, seat_stake):
            continue
        ops.append(op)
        owners.append(owner)
        stakes.append(stake)
    return ops, owners, stakes
