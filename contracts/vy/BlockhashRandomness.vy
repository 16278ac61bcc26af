# pragma version ~=0.4.3
"""
@title Devnet randomness: the hash of a past block
@notice `value(n)` is `blockhash(n)` once block `n` is in the past (strictly before the current
        block) and still among the last 256. Good enough for a devnet, where the block producer
        is trusted; a VRF or beacon adapter implementing `interfaces/IRandomness.vyi` replaces it
        in production (Verification takes the source as a settable address).
"""


@view
@external
def value(block_number: uint256) -> bytes32:
    assert block_number < block.number, "randomness: block not final yet"
    assert block.number - block_number <= 256, "randomness: block too old"
    return blockhash(block_number)
