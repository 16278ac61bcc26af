# pragma version ~=0.4.3
"""
@title Veriplex model registry
@notice The models the network serves: layer count, hidden size, the hash of the exact weights
        (a Merkle root over per-tensor hashes), the tokenizer hash, and the price per input and
        per output token in wei. Only the admin (two-step ownership) adds models or changes
        prices; weights are immutable — new weights are a new model id.
        Each model also records how it is served: the precision workers must compute in (a
        worker computing lower than this cheats, and checks treat it so), the keccak hash of
        the verification profile (verifier.evidence.Profile canonical JSON) checks are judged by
        and its on-chain chunk rule; serving changes wait out a timelock.
"""

from snekmate.auth import ownable
from snekmate.auth import ownable_2step
from modules import timelock

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

struct Model:
    name: String[64]
    layers: uint256
    hidden_size: uint256
    weights_root: bytes32
    tokenizer_hash: bytes32
    price_in_wei: uint256  # per input (prompt) token
    price_out_wei: uint256  # per output (generated) token
    active: bool


# Serving precisions (verifier.evidence.PRECISIONS; codes in contracts.model_registry).
PRECISION_FP32: constant(uint8) = 1
PRECISION_BF16: constant(uint8) = 2
PRECISION_FP16: constant(uint8) = 3
PRECISION_FP8: constant(uint8) = 4

struct Serving:
    precision: uint8  # 0 until set
    profile_hash: bytes32
    max_ulp: uint256  # the profile's chunk rule D (scale ulps) ...
    max_bad: uint256  # ... and K (elements of 32): the spot check of this model's tasks


# ------------------------------------------------------------------ EVENTS

event ModelRegistered:
    model_id: indexed(uint256)
    name: String[64]
    layers: uint256
    hidden_size: uint256
    weights_root: bytes32
    tokenizer_hash: bytes32
    price_in_wei: uint256
    price_out_wei: uint256

event PricesChanged:
    model_id: indexed(uint256)
    price_in_wei: uint256
    price_out_wei: uint256

event ModelActivationChanged:
    model_id: indexed(uint256)
    active: bool

event ServingChanged:
    model_id: indexed(uint256)
    precision: uint8
    profile_hash: bytes32
    max_ulp: uint256
    max_bad: uint256


# ------------------------------------------------------------------ STORAGE

models: public(HashMap[uint256, Model])  # ids start at 1; 0 means "none"
id_by_name: public(HashMap[String[64], uint256])
model_count: public(uint256)
serving: public(HashMap[uint256, Serving])  # model id -> registered precision and profile hash


# ------------------------------------------------------------------ CONSTRUCTOR

@deploy
@payable
def __init__(timelock_delay_: uint256):
    ownable.__init__()
    ownable_2step.__init__()
    timelock.__init__(timelock_delay_)


# ------------------------------------------------------------------ ADMIN

@external
def register_model(
    name: String[64],
    layers: uint256,
    hidden_size: uint256,
    weights_root: bytes32,
    tokenizer_hash: bytes32,
    price_in_wei: uint256,
    price_out_wei: uint256,
) -> uint256:
    """@notice Add a model; returns its id (1, 2, ...)."""
    ownable._check_owner()
    assert len(name) > 0, "models: empty name"
    assert self.id_by_name[name] == 0, "models: name taken"
    assert layers > 0, "models: zero layers"
    assert layers <= 65535, "models: too many layers"
    assert hidden_size > 0, "models: zero hidden size"
    assert weights_root != empty(bytes32), "models: empty weights root"
    assert tokenizer_hash != empty(bytes32), "models: empty tokenizer hash"
    model_id: uint256 = self.model_count + 1
    self.model_count = model_id
    self.models[model_id] = Model(
        name=name,
        layers=layers,
        hidden_size=hidden_size,
        weights_root=weights_root,
        tokenizer_hash=tokenizer_hash,
        price_in_wei=price_in_wei,
        price_out_wei=price_out_wei,
        active=True,
    )
    self.id_by_name[name] = model_id
    log ModelRegistered(
        model_id=model_id,
        name=name,
        layers=layers,
        hidden_size=hidden_size,
        weights_root=weights_root,
        tokenizer_hash=tokenizer_hash,
        price_in_wei=price_in_wei,
        price_out_wei=price_out_wei,
    )
    return model_id


@external
def set_prices(model_id: uint256, price_in_wei: uint256, price_out_wei: uint256):
    ownable._check_owner()
    self._check_exists(model_id)
    self.models[model_id].price_in_wei = price_in_wei
    self.models[model_id].price_out_wei = price_out_wei
    log PricesChanged(model_id=model_id, price_in_wei=price_in_wei, price_out_wei=price_out_wei)


@external
def set_active(model_id: uint256, active: bool):
    """@notice Retire (or bring back) a model: inactive models cannot be scheduled or billed."""
    ownable._check_owner()
    self._check_exists(model_id)
    self.models[model_id].active = active
    log ModelActivationChanged(model_id=model_id, active=active)


@external
def queue(op: bytes32):
    """@notice Announce a serving change (`serving_op`); it may run after the timelock delay."""
    ownable._check_owner()
    timelock._queue(op)


@external
def set_serving(
    model_id: uint256, precision: uint8, profile_hash: bytes32, max_ulp: uint256, max_bad: uint256
):
    """
    @notice Record the precision a model is served in, the hash of the verification profile its
            checks use and that profile's chunk rule (D = max_ulp, K = max_bad), which the
            on-chain spot check of the model's tasks applies instead of the game's default (bf16
            noise needs a wider rule than fp32). Behind the timelock (queued `serving_op` first,
            unless the delay is zero): the rule decides which honest noise passes, so it may not
            move at once. Tasks already opened keep the rule they were opened under.
    """
    ownable._check_owner()
    timelock._execute(keccak256(abi_encode(model_id, precision, profile_hash, max_ulp, max_bad)))
    self._check_exists(model_id)
    assert precision >= PRECISION_FP32 and precision <= PRECISION_FP8, "models: unknown precision"
    assert profile_hash != empty(bytes32), "models: empty profile hash"
    assert max_ulp < 65536 and max_bad < 32, "models: chunk rule out of range"
    self.serving[model_id] = Serving(
        precision=precision, profile_hash=profile_hash, max_ulp=max_ulp, max_bad=max_bad
    )
    log ServingChanged(
        model_id=model_id, precision=precision, profile_hash=profile_hash, max_ulp=max_ulp,
        max_bad=max_bad,
    )


# ------------------------------------------------------------------ VIEWS

@view
@external
def billing_info(model_id: uint256) -> (uint256, uint256, uint256, bool):
    """@notice (layers, price in, price out, active) in one call, for Scheduler and Payments."""
    return (
        self.models[model_id].layers,
        self.models[model_id].price_in_wei,
        self.models[model_id].price_out_wei,
        self.models[model_id].active,
    )


@view
@internal
def _check_exists(model_id: uint256):
    assert self.models[model_id].layers != 0, "models: unknown model"
