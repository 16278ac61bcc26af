# pragma version ~=0.4.3
"""
@title Veriplex payments
@notice Clients deposit coin and sign API keys: EIP-712 spending authorizations (client, gateway,
        cap, expiry, nonce), revocable by nonce. The gateway settles requests in batches: each
        record is checked against the model's registry prices and its key's cap and expiry,
        emitted as an event, and folded into the batch's Merkle root; storage keeps only the
        root and per-pipeline escrow. When the verification window closes anyone may release a
        batch: each pipeline's escrow is split among its operators' owners by layers served, the
        verifier pool and the protocol fee. Until then the verification role may refund a
        fraudulent record (with a Merkle proof) to the client. All payouts are pulled.
@dev Invariant: self.balance == total_deposits + total_balances + total_escrow + verifier_pool.
     A request id is keccak256(abi_encode(chain.id, self, gateway, seq)); a per-gateway bitmap of
     settled `seq`s stops any record from being charged twice.
"""

from snekmate.auth import ownable
from snekmate.auth import ownable_2step
from snekmate.utils import eip712_domain_separator as eip712

from modules import api_keys
from modules import batch_tree
from interfaces import INodeRegistry
from interfaces import IModelRegistry
from interfaces import IVerification

initializes: ownable
initializes: ownable_2step[ownable := ownable]
initializes: eip712
initializes: api_keys[eip712 := eip712]

exports: (
    ownable.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
    eip712.eip712Domain,
    api_keys.keys,
    api_keys.key_of_nonce,
    api_keys.key_hash,
    api_keys.register_key,
    api_keys.revoke_key,
)


# ------------------------------------------------------------------ TYPES

struct Stage:
    operator: address
    layer_start: uint256
    layer_end: uint256

struct Pipeline:
    model_id: uint256
    stages: DynArray[Stage, MAX_STAGES]

struct Record:
    seq: uint256  # gateway's sequence number; the request id derives from it
    key_index: uint256  # into the batch's key table
    pipeline_index: uint256  # into the batch's pipeline table
    tokens_in: uint256
    tokens_out: uint256
    charge: uint256  # must equal tokens_in * price_in + tokens_out * price_out
    commitment_root: bytes32

struct Batch:
    root: bytes32  # Merkle root over the record leaves
    pipelines_hash: bytes32  # keccak256(abi_encode(pipelines)); zeroed once released
    release_block: uint256


# ------------------------------------------------------------------ EVENTS

event Deposited:
    client: indexed(address)
    amount: uint256
    deposit: uint256

event DepositWithdrawn:
    client: indexed(address)
    amount: uint256
    deposit: uint256

event RequestSettled:
    batch_id: indexed(uint256)
    request_id: indexed(bytes32)
    key_hash: indexed(bytes32)
    pipeline_index: uint256
    tokens_in: uint256
    tokens_out: uint256
    charge: uint256
    commitment_root: bytes32

event BatchSettled:
    batch_id: indexed(uint256)
    gateway: indexed(address)
    root: bytes32
    record_count: uint256
    total_charge: uint256
    release_block: uint256
    keys: DynArray[bytes32, MAX_KEYS]
    pipelines: DynArray[Pipeline, MAX_PIPELINES]

event BatchReleased:
    batch_id: indexed(uint256)
    operators_total: uint256
    verifier_pool: uint256
    protocol_fee: uint256

event EarningsCredited:
    account: indexed(address)
    batch_id: indexed(uint256)
    operator: indexed(address)
    amount: uint256

event RequestRefunded:
    batch_id: indexed(uint256)
    request_id: indexed(bytes32)
    client: indexed(address)
    charge: uint256

event VerifierPaid:
    verifier: indexed(address)
    amount: uint256

event Withdrawn:
    account: indexed(address)
    amount: uint256

event RolesSet:
    verification: address
    fee_recipient: address

event ParamsSet:
    verification_window: uint256
    protocol_fee_bps: uint256
    verifier_share_bps: uint256


# ------------------------------------------------------------------ STORAGE

BPS: constant(uint256) = 10_000
MAX_STAGES: constant(uint256) = 16
MAX_PIPELINES: constant(uint256) = 8
MAX_KEYS: constant(uint256) = 16
MAX_RECORDS: constant(uint256) = batch_tree.MAX_RECORDS
registry: public(INodeRegistry)
models: public(IModelRegistry)
verification: public(address)  # refunds and verifier payouts (the verification contract)
fee_recipient: public(address)
verification_window: public(uint256)  # blocks a batch stays escrowed
protocol_fee_bps: public(uint256)
verifier_share_bps: public(uint256)

deposits: public(HashMap[address, uint256])
balances: public(HashMap[address, uint256])  # credited earnings and fees, pulled by withdraw()
settled_bits: HashMap[address, HashMap[uint256, uint256]]  # gateway -> seq >> 8 -> bitmap
batches: public(HashMap[uint256, Batch])  # ids start at 1
pipeline_escrow: public(HashMap[uint256, HashMap[uint256, uint256]])  # batch -> pipeline -> wei
refunded: public(HashMap[bytes32, bool])  # leaf -> refunded
batch_count: public(uint256)

total_deposits: public(uint256)
total_balances: public(uint256)
total_escrow: public(uint256)
verifier_pool: public(uint256)


# ------------------------------------------------------------------ CONSTRUCTOR

@deploy
@payable
def __init__(
    registry_: INodeRegistry,
    models_: IModelRegistry,
    verification_window_: uint256,
    protocol_fee_bps_: uint256,
    verifier_share_bps_: uint256,
    fee_recipient_: address,
):
    ownable.__init__()
    ownable_2step.__init__()
    eip712.__init__("Veriplex Payments", "1")
    self.registry = registry_
    self.models = models_
    self._set_params(verification_window_, protocol_fee_bps_, verifier_share_bps_)
    self.fee_recipient = fee_recipient_
    log RolesSet(verification=empty(address), fee_recipient=fee_recipient_)


# ------------------------------------------------------------------ ADMIN

@external
def set_roles(verification_: address, fee_recipient_: address):
    ownable._check_owner()
    assert fee_recipient_ != empty(address), "payments: fee recipient is the zero address"
    self.verification = verification_
    self.fee_recipient = fee_recipient_
    log RolesSet(verification=verification_, fee_recipient=fee_recipient_)


@external
def set_params(
    verification_window_: uint256, protocol_fee_bps_: uint256, verifier_share_bps_: uint256
):
    ownable._check_owner()
    self._set_params(verification_window_, protocol_fee_bps_, verifier_share_bps_)


@internal
def _set_params(window: uint256, fee_bps: uint256, verifier_bps: uint256):
    assert window > 0, "payments: verification window is zero"
    assert fee_bps + verifier_bps <= BPS, "payments: shares above 100%"
    self.verification_window = window
    self.protocol_fee_bps = fee_bps
    self.verifier_share_bps = verifier_bps
    log ParamsSet(
        verification_window=window, protocol_fee_bps=fee_bps, verifier_share_bps=verifier_bps
    )


# ------------------------------------------------------------------ CLIENT

@external
@payable
def deposit():
    assert msg.value > 0, "payments: zero amount"
    new: uint256 = self.deposits[msg.sender] + msg.value
    self.deposits[msg.sender] = new
    self.total_deposits += msg.value
    log Deposited(client=msg.sender, amount=msg.value, deposit=new)


@external
@nonreentrant
def withdraw_deposit(amount: uint256):
    """@notice Take back unspent deposit (escrowed charges are not part of it)."""
    assert amount > 0, "payments: zero amount"
    have: uint256 = self.deposits[msg.sender]
    assert amount <= have, "payments: amount exceeds deposit"
    self.deposits[msg.sender] = have - amount
    self.total_deposits -= amount
    log DepositWithdrawn(client=msg.sender, amount=amount, deposit=have - amount)
    raw_call(msg.sender, b"", value=amount)


# ------------------------------------------------------------------ GATEWAY

@external
def settle_batch(
    keys: DynArray[bytes32, MAX_KEYS],
    pipelines: DynArray[Pipeline, MAX_PIPELINES],
    records: DynArray[Record, MAX_RECORDS],
) -> uint256:
    """
    @notice Charge a batch of requests served through this gateway (msg.sender) and escrow the
            coin until the verification window closes. Returns the batch id.
    """
    n: uint256 = len(records)
    assert n > 0, "payments: empty batch"
    batch_id: uint256 = self.batch_count + 1

    # Pipelines: complete, contiguous, current operators; remember their prices.
    price_in: uint256[MAX_PIPELINES] = empty(uint256[MAX_PIPELINES])
    price_out: uint256[MAX_PIPELINES] = empty(uint256[MAX_PIPELINES])
    for i: uint256 in range(len(pipelines), bound=MAX_PIPELINES):
        price_in[i], price_out[i] = self._check_pipeline(pipelines[i])

    # Keys: registered for this gateway, live.
    for k: bytes32 in keys:
        assert api_keys.keys[k].gateway == msg.sender, "payments: key not for this gateway"
        assert not api_keys.keys[k].revoked, "payments: key revoked"
        assert block.timestamp <= api_keys.keys[k].expiry, "payments: key expired"

    key_spend: uint256[MAX_KEYS] = empty(uint256[MAX_KEYS])
    pipe_charge: uint256[MAX_PIPELINES] = empty(uint256[MAX_PIPELINES])
    leaves: bytes32[batch_tree.MAX_RECORDS] = empty(bytes32[batch_tree.MAX_RECORDS])
    word_index: uint256 = max_value(uint256)
    word: uint256 = 0
    total: uint256 = 0
    for i: uint256 in range(n, bound=MAX_RECORDS):
        r: Record = records[i]
        assert r.key_index < len(keys), "payments: bad key index"
        assert r.pipeline_index < len(pipelines), "payments: bad pipeline index"
        # Prices and token counts are far below 2**128 in practice; overflow reverts anyway.
        expected: uint256 = (
            r.tokens_in * price_in[r.pipeline_index] + r.tokens_out * price_out[r.pipeline_index]
        )
        assert r.charge == expected, "payments: charge does not match prices"
        # Mark seq settled; the bitmap word is cached while consecutive seqs share it.
        if r.seq >> 8 != word_index:
            if word_index != max_value(uint256):
                self.settled_bits[msg.sender][word_index] = word
            word_index = r.seq >> 8
            word = self.settled_bits[msg.sender][word_index]
        bit: uint256 = 1 << (r.seq & 255)
        assert word & bit == 0, "payments: request already settled"
        word |= bit
        request_id: bytes32 = keccak256(abi_encode(chain.id, self, msg.sender, r.seq))
        key: bytes32 = keys[r.key_index]
        leaves[i] = batch_tree._leaf(
            request_id, key, r.pipeline_index, r.tokens_in, r.tokens_out, r.charge,
            r.commitment_root,
        )
        key_spend[r.key_index] += r.charge
        pipe_charge[r.pipeline_index] += r.charge
        total += r.charge
        log RequestSettled(
            batch_id=batch_id, request_id=request_id, key_hash=key, pipeline_index=r.pipeline_index,
            tokens_in=r.tokens_in, tokens_out=r.tokens_out, charge=r.charge,
            commitment_root=r.commitment_root,
        )
    self.settled_bits[msg.sender][word_index] = word

    # Caps and deposits, once per key.
    for j: uint256 in range(len(keys), bound=MAX_KEYS):
        spend: uint256 = key_spend[j]
        if spend == 0:
            continue
        k: bytes32 = keys[j]
        spent: uint256 = api_keys.keys[k].spent + spend
        assert spent <= api_keys.keys[k].cap, "payments: key cap exceeded"
        api_keys.keys[k].spent = spent
        client: address = api_keys.keys[k].client
        have: uint256 = self.deposits[client]
        assert spend <= have, "payments: insufficient deposit"
        self.deposits[client] = have - spend

    for p: uint256 in range(len(pipelines), bound=MAX_PIPELINES):
        if pipe_charge[p] != 0:
            self.pipeline_escrow[batch_id][p] = pipe_charge[p]

    root: bytes32 = batch_tree._merkle_root(leaves, n)
    release: uint256 = block.number + self.verification_window
    self.batches[batch_id] = Batch(
        root=root, pipelines_hash=keccak256(abi_encode(pipelines)), release_block=release
    )
    self.batch_count = batch_id
    self.total_deposits -= total
    self.total_escrow += total
    log BatchSettled(
        batch_id=batch_id, gateway=msg.sender, root=root, record_count=n, total_charge=total,
        release_block=release, keys=keys, pipelines=pipelines,
    )
    return batch_id


# ------------------------------------------------------------------ RELEASE (anyone)

@external
def release(batch_id: uint256, pipelines: DynArray[Pipeline, MAX_PIPELINES]):
    """
    @notice After the verification window, split the batch's escrow: operators' owners by
            layers served, the verifier pool, the protocol fee. `pipelines` must be the batch's
            pipeline table (from its BatchSettled event).
    """
    b: Batch = self.batches[batch_id]
    assert b.root != empty(bytes32), "payments: unknown batch"
    assert b.pipelines_hash != empty(bytes32), "payments: batch already released"
    assert block.number >= b.release_block, "payments: verification window open"
    assert keccak256(abi_encode(pipelines)) == b.pipelines_hash, (
        "payments: pipelines do not match batch"
    )
    if self.verification.is_contract:  # an EOA role (tests, bootstrapping) opens no tasks
        assert staticcall IVerification(self.verification).open_tasks(batch_id) == 0, (
            "payments: verification still open"
        )
    self.batches[batch_id].pipelines_hash = empty(bytes32)
    fee_total: uint256 = 0
    ver_total: uint256 = 0
    ops_total: uint256 = 0
    for p: uint256 in range(len(pipelines), bound=MAX_PIPELINES):
        c: uint256 = self.pipeline_escrow[batch_id][p]
        if c == 0:
            continue
        self.pipeline_escrow[batch_id][p] = 0
        fee: uint256 = c * self.protocol_fee_bps // BPS
        ver: uint256 = c * self.verifier_share_bps // BPS
        ops: uint256 = c - fee - ver
        fee_total += fee
        ver_total += ver
        ops_total += ops
        stages: DynArray[Stage, MAX_STAGES] = pipelines[p].stages
        layers: uint256 = stages[len(stages) - 1].layer_end
        paid: uint256 = 0
        for s: uint256 in range(len(stages), bound=MAX_STAGES):
            share: uint256 = 0
            if s == len(stages) - 1:
                share = ops - paid  # the last stage takes the rounding dust
            else:
                share = ops * (stages[s].layer_end - stages[s].layer_start) // layers
            paid += share
            # owner_of_operator is permanent: a key rotated since settlement still pays its owner.
            owner: address = staticcall self.registry.owner_of_operator(stages[s].operator)
            self.balances[owner] += share
            log EarningsCredited(
                account=owner, batch_id=batch_id, operator=stages[s].operator, amount=share
            )
    self.balances[self.fee_recipient] += fee_total
    self.verifier_pool += ver_total
    self.total_balances += ops_total + fee_total
    self.total_escrow -= ops_total + fee_total + ver_total
    log BatchReleased(
        batch_id=batch_id,
        operators_total=ops_total,
        verifier_pool=ver_total,
        protocol_fee=fee_total,
    )


# ------------------------------------------------------------------ VERIFICATION ROLE

@external
def refund(
    batch_id: uint256,
    request_id: bytes32,
    key: bytes32,
    pipeline_index: uint256,
    tokens_in: uint256,
    tokens_out: uint256,
    charge: uint256,
    commitment_root: bytes32,
    proof: DynArray[bytes32, batch_tree.MAX_PROOF],
):
    """@notice Return a fraudulent request's charge to its client's deposit (before release)."""
    assert msg.sender == self.verification, "payments: caller is not the verification role"
    b: Batch = self.batches[batch_id]
    assert b.root != empty(bytes32), "payments: unknown batch"
    assert b.pipelines_hash != empty(bytes32), "payments: batch already released"
    leaf: bytes32 = batch_tree._leaf(
        request_id, key, pipeline_index, tokens_in, tokens_out, charge, commitment_root
    )
    assert not self.refunded[leaf], "payments: already refunded"
    assert batch_tree._verify(proof, b.root, leaf), "payments: record not in batch"
    self.refunded[leaf] = True
    self.pipeline_escrow[batch_id][pipeline_index] -= charge
    self.total_escrow -= charge
    client: address = api_keys.keys[key].client
    api_keys.keys[key].spent -= charge
    self.deposits[client] += charge
    self.total_deposits += charge
    log RequestRefunded(batch_id=batch_id, request_id=request_id, client=client, charge=charge)


@external
def pay_verifier(verifier: address, amount: uint256):
    """@notice Credit a verifier's reward from the verifier pool."""
    assert msg.sender == self.verification, "payments: caller is not the verification role"
    assert amount > 0, "payments: zero amount"
    assert amount <= self.verifier_pool, "payments: verifier pool too small"
    self.verifier_pool -= amount
    self.balances[verifier] += amount
    self.total_balances += amount
    log VerifierPaid(verifier=verifier, amount=amount)


# ------------------------------------------------------------------ PULL PAYMENTS

@external
@nonreentrant
def withdraw():
    """@notice Send the caller's credited earnings to the caller."""
    amount: uint256 = self.balances[msg.sender]
    assert amount > 0, "payments: nothing to withdraw"
    self.balances[msg.sender] = 0
    self.total_balances -= amount
    log Withdrawn(account=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)


# ------------------------------------------------------------------ VIEWS

@view
@external
def request_id_of(gateway: address, seq: uint256) -> bytes32:
    return keccak256(abi_encode(chain.id, self, gateway, seq))


@view
@external
def is_settled(gateway: address, seq: uint256) -> bool:
    return self.settled_bits[gateway][seq >> 8] & (1 << (seq & 255)) != 0


# ------------------------------------------------------------------ INTERNAL

@view
@internal
def _check_pipeline(p: Pipeline) -> (uint256, uint256):
    layers: uint256 = 0
    pin: uint256 = 0
    pout: uint256 = 0
    active: bool = False
    layers, pin, pout, active = staticcall self.models.billing_info(p.model_id)
    assert layers != 0, "payments: unknown model"
    assert active, "payments: model inactive"
    assert len(p.stages) > 0, "payments: empty pipeline"
    at: uint256 = 0
    for s: Stage in p.stages:
        assert s.layer_start == at and s.layer_end > s.layer_start, (
            "payments: pipeline not contiguous"
        )
        owner: address = staticcall self.registry.node_of(s.operator)
        assert owner != empty(address), "payments: operator not registered"
        at = s.layer_end
    assert at == layers, "payments: pipeline incomplete"
    return pin, pout
