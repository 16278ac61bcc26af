# pragma version ~=0.4.3
"""
@title Veriplex scheduler (on-chain part)
@notice Epochs of layer allocation. The coordinator publishes every (operator, model, layer
        range) of an epoch plus the hash of the solver's input snapshot, so anyone can re-run the
        deterministic solver and compare. The contract checks each operator is registered,
        staked and unjailed, each range lies inside its model, and each model's ranges form at
        least one complete pipeline [0, layers). Current assignments are queryable; history is in
        the `AllocationAssigned` events.
@dev Entries must be sorted by (model_id, layer_start): the pipeline check is then one pass of
     the "jump game" (a node holding [a, b) can serve any suffix [l, b) with a <= l < b, so from
     the furthest reachable layer `reach`, an entry with a <= reach extends it to b).
"""

from snekmate.auth import ownable
from snekmate.auth import ownable_2step

from interfaces import INodeRegistry
from interfaces import IModelRegistry

initializes: ownable
initializes: ownable_2step[ownable := ownable]

exports: (
    ownable.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
)


# ------------------------------------------------------------------ TYPES

struct Entry:
    operator: address
    model_id: uint256
    layer_start: uint256
    layer_end: uint256


# ------------------------------------------------------------------ EVENTS

event EpochPublished:
    epoch: indexed(uint256)
    publisher: indexed(address)
    snapshot_hash: bytes32
    entry_count: uint256

event AllocationAssigned:
    epoch: indexed(uint256)
    operator: indexed(address)
    model_id: indexed(uint256)
    layer_start: uint256
    layer_end: uint256

event CoordinatorSet:
    coordinator: indexed(address)


# ------------------------------------------------------------------ STORAGE

MAX_ENTRIES: constant(uint256) = 1024

registry: public(INodeRegistry)
models: public(IModelRegistry)
coordinator: public(address)
epoch: public(uint256)  # 0 = nothing published yet
snapshot_hash: public(HashMap[uint256, bytes32])  # epoch -> solver input hash
epoch_block: public(HashMap[uint256, uint256])  # epoch -> block it was published in
# operator -> epoch << 128 | model_id << 64 | layer_start << 32 | layer_end, one slot per entry
# (a struct would take four). Lossless: layer_end <= layers <= 65535 (ModelRegistry caps it), and
# model ids and epochs are sequential counters (one per transaction) that cannot reach 2**64.
packed_assignment: HashMap[address, uint256]


# ------------------------------------------------------------------ CONSTRUCTOR

@deploy
@payable
def __init__(registry_: INodeRegistry, models_: IModelRegistry, coordinator_: address):
    ownable.__init__()
    ownable_2step.__init__()
    self.registry = registry_
    self.models = models_
    self.coordinator = coordinator_
    log CoordinatorSet(coordinator=coordinator_)


# ------------------------------------------------------------------ ADMIN

@external
def set_coordinator(coordinator_: address):
    ownable._check_owner()
    self.coordinator = coordinator_
    log CoordinatorSet(coordinator=coordinator_)


# ------------------------------------------------------------------ COORDINATOR

@external
def publish_epoch(entries: DynArray[Entry, MAX_ENTRIES], snapshot_hash: bytes32) -> uint256:
    """@notice Publish the next epoch's allocation; returns the new epoch number."""
    assert msg.sender == self.coordinator, "scheduler: caller is not the coordinator"
    assert len(entries) > 0, "scheduler: empty allocation"
    assert snapshot_hash != empty(bytes32), "scheduler: empty snapshot hash"
    new_epoch: uint256 = self.epoch + 1
    model: uint256 = 0
    layers: uint256 = 0
    reach: uint256 = 0
    prev_start: uint256 = 0
    for e: Entry in entries:
        if e.model_id != model:
            assert model == 0 or reach == layers, "scheduler: no complete pipeline"
            assert e.model_id > model, "scheduler: entries not sorted"
            active: bool = False
            price_in: uint256 = 0
            price_out: uint256 = 0
            layers, price_in, price_out, active = staticcall self.models.billing_info(e.model_id)
            assert layers != 0, "scheduler: unknown model"
            assert active, "scheduler: model inactive"
            model = e.model_id
            reach = 0
        else:
            assert e.layer_start >= prev_start, "scheduler: entries not sorted"
        assert e.layer_start < e.layer_end, "scheduler: empty layer range"
        assert e.layer_end <= layers, "scheduler: range outside model"
        assert staticcall self.registry.is_active(e.operator), "scheduler: operator not active"
        assert self.packed_assignment[e.operator] >> 128 != new_epoch, (
            "scheduler: duplicate operator"
        )
        if e.layer_start <= reach:
            reach = max(reach, e.layer_end)
        prev_start = e.layer_start
        self.packed_assignment[e.operator] = (
            new_epoch << 128 | e.model_id << 64 | e.layer_start << 32 | e.layer_end
        )
        log AllocationAssigned(
            epoch=new_epoch,
            operator=e.operator,
            model_id=e.model_id,
            layer_start=e.layer_start,
            layer_end=e.layer_end,
        )
    assert reach == layers, "scheduler: no complete pipeline"
    self.epoch = new_epoch
    self.snapshot_hash[new_epoch] = snapshot_hash
    self.epoch_block[new_epoch] = block.number
    log EpochPublished(
        epoch=new_epoch, publisher=msg.sender, snapshot_hash=snapshot_hash, entry_count=len(entries)
    )
    return new_epoch


# ------------------------------------------------------------------ VIEWS

@view
@external
def assignment_of(operator: address) -> (uint256, uint256, uint256, uint256):
    """@notice (epoch, model_id, layer_start, layer_end) of the operator's latest assignment."""
    p: uint256 = self.packed_assignment[operator]
    return (p >> 128, (p >> 64) & (2**64 - 1), (p >> 32) & (2**32 - 1), p & (2**32 - 1))


@view
@external
def current_assignment(operator: address) -> (bool, uint256, uint256, uint256):
    """@notice (assigned in the current epoch?, model_id, layer_start, layer_end)."""
    p: uint256 = self.packed_assignment[operator]
    if self.epoch == 0 or p >> 128 != self.epoch:
        return (False, 0, 0, 0)
    return (True, (p >> 64) & (2**64 - 1), (p >> 32) & (2**32 - 1), p & (2**32 - 1))
