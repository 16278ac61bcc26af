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
        fraudulent or unverifiable record (with a Merkle proof) to the client. All payouts are
        pulled. Gateways are registered and bonded; the verification role slashes the bond of a
        gateway that settled a record its stages never attested. A record that cannot be
        charged (key revoked or expired, cap or deposit short, a stage inactive, a charge off
        the price list or below the minimum) is skipped and reported (`RecordSkipped`), never
        the whole batch. Fee shares and the window are fixed in the batch when it settles;
        parameter changes wait out a timelock; the verification role is wired once.
@dev Invariant: self.balance == total_deposits + total_balances + total_escrow + verifier_pool
     + total_bonds.
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
from interfaces import ISlasher
from modules import timelock

initializes: ownable
initializes: ownable_2step[ownable := ownable]
initializes: eip712
initializes: api_keys[eip712 := eip712]
initializes: timelock

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
    timelock.delay,
    timelock.eta,
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
    # gateway | settle_block << 160 | protocol_fee_bps << 208 | verifier_share_bps << 224:
    # the terms the batch settled under, packed in one slot (see `batch_terms`)
    terms: uint256


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

event RecordSkipped:
    gateway: indexed(address)
    seq: indexed(uint256)
    reason: uint8  # SKIP_* below; the seq stays unsettled, so the gateway may retry it

event GatewayBonded:
    gateway: indexed(address)
    amount: uint256
    bond: uint256

event GatewayExitRequested:
    gateway: indexed(address)
    ready_block: uint256

event GatewayBondWithdrawn:
    gateway: indexed(address)
    amount: uint256

event GatewaySlashed:
    gateway: indexed(address)
    amount: uint256
    to_prover: uint256
    burned: uint256
    prover: indexed(address)
    bond: uint256

event RolesSet:
    verification: address
    fee_recipient: address

event ParamsSet:
    verification_window: uint256
    protocol_fee_bps: uint256
    verifier_share_bps: uint256
    min_gateway_bond: uint256
    min_charge: uint256


# ------------------------------------------------------------------ STORAGE

BPS: constant(uint256) = 10_000
MAX_STAGES: constant(uint256) = 16
MAX_PIPELINES: constant(uint256) = 8
MAX_KEYS: constant(uint256) = 16
MAX_RECORDS: constant(uint256) = batch_tree.MAX_RECORDS
BURN_ADDRESS: constant(address) = 0x000000000000000000000000000000000000dEaD
SKIP_KEY: constant(uint8) = 1  # key revoked, expired or not this gateway's
SKIP_CHARGE: constant(uint8) = 2  # charge off the price list or below the minimum
SKIP_STAGE: constant(uint8) = 3  # a stage of its pipeline is not active
SKIP_FUNDS: constant(uint8) = 4  # the key's cap or the client's deposit is short
SKIP_SETTLED: constant(uint8) = 5  # seq already settled
registry: public(INodeRegistry)
models: public(IModelRegistry)
verification: public(address)  # refunds and verifier payouts (the verification contract)
fee_recipient: public(address)
verification_window: public(uint256)  # blocks a batch stays escrowed
protocol_fee_bps: public(uint256)
verifier_share_bps: public(uint256)
min_gateway_bond: public(uint256)
min_charge: public(uint256)  # wei per record: no free record can open a task

deposits: public(HashMap[address, uint256])
balances: public(HashMap[address, uint256])  # credited earnings and fees, pulled by withdraw()
settled_bits: HashMap[address, HashMap[uint256, uint256]]  # gateway -> seq >> 8 -> bitmap
batches: public(HashMap[uint256, Batch])  # ids start at 1
pipeline_escrow: public(HashMap[uint256, HashMap[uint256, uint256]])  # batch -> pipeline -> wei
refunded: public(HashMap[bytes32, bool])  # request id -> refunded
batch_count: public(uint256)

total_deposits: public(uint256)
total_balances: public(uint256)
total_escrow: public(uint256)
verifier_pool: public(uint256)
total_bonds: public(uint256)

gateway_bond: public(HashMap[address, uint256])
gateway_exit_block: public(HashMap[address, uint256])  # 0: not exiting
gateway_open_batches: public(HashMap[address, uint256])  # settled, not yet released


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
    min_gateway_bond_: uint256,
    min_charge_: uint256,
    timelock_delay_: uint256,
):
    ownable.__init__()
    ownable_2step.__init__()
    eip712.__init__("Veriplex Payments", "1")
    timelock.__init__(timelock_delay_)
    self.registry = registry_
    self.models = models_
    self._set_params(
        verification_window_, protocol_fee_bps_, verifier_share_bps_, min_gateway_bond_,
        min_charge_,
    )
    self.fee_recipient = fee_recipient_
    log RolesSet(verification=empty(address), fee_recipient=fee_recipient_)


# ------------------------------------------------------------------ ADMIN

@external
def set_roles(verification_: address, fee_recipient_: address):
    """@notice Wire the verification role and the fee recipient (once, for good)."""
    ownable._check_owner()
    assert self.verification == empty(address), "payments: roles already set"
    assert verification_ != empty(address), "payments: verification is the zero address"
    assert fee_recipient_ != empty(address), "payments: fee recipient is the zero address"
    self.verification = verification_
    self.fee_recipient = fee_recipient_
    log RolesSet(verification=verification_, fee_recipient=fee_recipient_)


@external
def queue(op: bytes32):
    """@notice Announce a parameter change (`params_op`); it may run after the timelock delay."""
    ownable._check_owner()
    timelock._queue(op)


@external
def set_params(
    verification_window_: uint256, protocol_fee_bps_: uint256, verifier_share_bps_: uint256,
    min_gateway_bond_: uint256, min_charge_: uint256,
):
    """@notice Change parameters (queued first unless the delay is zero). Settled batches keep
            the window and shares they settled under."""
    ownable._check_owner()
    timelock._execute(self._params_op(
        verification_window_, protocol_fee_bps_, verifier_share_bps_, min_gateway_bond_,
        min_charge_,
    ))
    self._set_params(
        verification_window_, protocol_fee_bps_, verifier_share_bps_, min_gateway_bond_,
        min_charge_,
    )


@pure
@external
def params_op(
    verification_window_: uint256, protocol_fee_bps_: uint256, verifier_share_bps_: uint256,
    min_gateway_bond_: uint256, min_charge_: uint256,
) -> bytes32:
    """@notice The operation id `queue` takes for `set_params` with these values."""
    return self._params_op(
        verification_window_, protocol_fee_bps_, verifier_share_bps_, min_gateway_bond_,
        min_charge_,
    )


@pure
@internal
def _params_op(a: uint256, b: uint256, c: uint256, d: uint256, e: uint256) -> bytes32:
    return keccak256(abi_encode(a, b, c, d, e))


@internal
def _set_params(
    window: uint256, fee_bps: uint256, verifier_bps: uint256, bond: uint256, min_charge_: uint256
):
    assert window > 0 and window < 2**32, "payments: verification window outside 1..2**32"
    assert fee_bps + verifier_bps <= BPS, "payments: shares above 100%"
    assert min_charge_ > 0, "payments: minimum charge is zero"
    if self.verification.is_contract:
        # The window must leave time to open tasks, and unbonding must outlast window + tasks.
        assert window >= staticcall ISlasher(self.verification).min_window(), (
            "payments: window too short to open tasks"
        )
        # min_unbonding() is the current window + the task lifetime
        need: uint256 = staticcall ISlasher(self.verification).min_unbonding()
        assert staticcall self.registry.unbonding_period() + self.verification_window >= need + window, (
            "payments: unbonding shorter than window + task lifetime"
        )
    self.verification_window = window
    self.protocol_fee_bps = fee_bps
    self.verifier_share_bps = verifier_bps
    self.min_gateway_bond = bond
    self.min_charge = min_charge_
    log ParamsSet(
        verification_window=window, protocol_fee_bps=fee_bps, verifier_share_bps=verifier_bps,
        min_gateway_bond=bond, min_charge=min_charge_,
    )


# ------------------------------------------------------------------ GATEWAY BOND

@external
@payable
def bond_gateway():
    """@notice Register (or top up) the caller as a gateway, bonding msg.value."""
    assert msg.value > 0, "payments: zero amount"
    new: uint256 = self.gateway_bond[msg.sender] + msg.value
    self.gateway_bond[msg.sender] = new
    self.gateway_exit_block[msg.sender] = 0
    self.total_bonds += msg.value
    log GatewayBonded(gateway=msg.sender, amount=msg.value, bond=new)


@external
def request_gateway_exit():
    """@notice Stop settling; the bond is withdrawable once every batch is released and the
            exit delay (window + task lifetime) has passed."""
    assert self.gateway_bond[msg.sender] > 0, "payments: no gateway bond"
    ready: uint256 = block.number + staticcall self.registry.unbonding_period()
    self.gateway_exit_block[msg.sender] = ready
    log GatewayExitRequested(gateway=msg.sender, ready_block=ready)


@external
@nonreentrant
def withdraw_gateway_bond():
    amount: uint256 = self.gateway_bond[msg.sender]
    ready: uint256 = self.gateway_exit_block[msg.sender]
    assert amount > 0, "payments: no gateway bond"
    assert ready != 0 and block.number >= ready, "payments: gateway exit not ready"
    assert self.gateway_open_batches[msg.sender] == 0, "payments: gateway has open batches"
    self.gateway_bond[msg.sender] = 0
    self.gateway_exit_block[msg.sender] = 0
    self.total_bonds -= amount
    log GatewayBondWithdrawn(gateway=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)


@external
def slash_gateway(gateway: address, amount: uint256, prover: address) -> uint256:
    """@notice Take up to `amount` of a gateway's bond (verification role): half to the prover,
            the rest burned. Returns what was taken."""
    assert msg.sender == self.verification, "payments: caller is not the verification role"
    bond: uint256 = self.gateway_bond[gateway]
    taken: uint256 = min(amount, bond)
    if taken == 0:
        return 0
    to_prover: uint256 = taken // 2
    burned: uint256 = taken - to_prover
    self.gateway_bond[gateway] = bond - taken
    self.total_bonds -= taken
    self.balances[prover] += to_prover
    self.total_balances += to_prover
    log GatewaySlashed(
        gateway=gateway, amount=taken, to_prover=to_prover, burned=burned, prover=prover,
        bond=bond - taken,
    )
    raw_call(BURN_ADDRESS, b"", value=burned)  # no code there: cannot re-enter
    return taken


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
    @notice Charge a batch of requests served through this gateway (msg.sender, bonded) and
            escrow the coin until the verification window closes. Records that cannot be
            charged are skipped (`RecordSkipped`) and stay unsettled; returns the batch id, or
            0 when every record was skipped.
    """
    n: uint256 = len(records)
    assert n > 0, "payments: empty batch"
    assert self.gateway_bond[msg.sender] >= self.min_gateway_bond, "payments: gateway not bonded"
    assert self.gateway_exit_block[msg.sender] == 0, "payments: gateway is exiting"
    batch_id: uint256 = self.batch_count + 1
    min_charge_: uint256 = self.min_charge

    # Pipelines: complete and contiguous (else the gateway is wrong: revert); a pipeline with
    # an inactive stage (unstaked, jailed, rotated key) only skips its own records.
    price_in: uint256[MAX_PIPELINES] = empty(uint256[MAX_PIPELINES])
    price_out: uint256[MAX_PIPELINES] = empty(uint256[MAX_PIPELINES])
    pipe_ok: bool[MAX_PIPELINES] = empty(bool[MAX_PIPELINES])
    for i: uint256 in range(len(pipelines), bound=MAX_PIPELINES):
        price_in[i], price_out[i], pipe_ok[i] = self._check_pipeline(pipelines[i])

    # Keys: live and this gateway's; what each may still spend (cap) and its client's deposit
    # (shared by every key of that client in the batch: `payer` is the first such key).
    key_ok: bool[MAX_KEYS] = empty(bool[MAX_KEYS])
    cap_left: uint256[MAX_KEYS] = empty(uint256[MAX_KEYS])
    dep_left: uint256[MAX_KEYS] = empty(uint256[MAX_KEYS])
    payer: uint256[MAX_KEYS] = empty(uint256[MAX_KEYS])
    clients: address[MAX_KEYS] = empty(address[MAX_KEYS])
    for j: uint256 in range(len(keys), bound=MAX_KEYS):
        ks: api_keys.KeyState = api_keys.keys[keys[j]]
        key_ok[j] = ks.gateway == msg.sender and not ks.revoked and block.timestamp <= ks.expiry
        cap_left[j] = ks.cap - min(ks.spent, ks.cap)
        clients[j] = ks.client
        payer[j] = j
        for q: uint256 in range(j, bound=MAX_KEYS):
            if clients[q] == ks.client:
                payer[j] = q
                break
        if payer[j] == j:
            dep_left[j] = self.deposits[ks.client]

    key_spend: uint256[MAX_KEYS] = empty(uint256[MAX_KEYS])
    pipe_charge: uint256[MAX_PIPELINES] = empty(uint256[MAX_PIPELINES])
    leaves: bytes32[batch_tree.MAX_RECORDS] = empty(bytes32[batch_tree.MAX_RECORDS])
    count: uint256 = 0
    word_index: uint256 = max_value(uint256)
    word: uint256 = 0
    total: uint256 = 0
    for i: uint256 in range(n, bound=MAX_RECORDS):
        r: Record = records[i]
        assert r.key_index < len(keys), "payments: bad key index"
        assert r.pipeline_index < len(pipelines), "payments: bad pipeline index"
        # The bitmap word is cached while consecutive seqs share it.
        if r.seq >> 8 != word_index:
            if word_index != max_value(uint256):
                self.settled_bits[msg.sender][word_index] = word
            word_index = r.seq >> 8
            word = self.settled_bits[msg.sender][word_index]
        bit: uint256 = 1 << (r.seq & 255)
        k: uint256 = r.key_index
        reason: uint8 = 0
        # Prices and token counts are far below 2**128 in practice; overflow reverts anyway.
        if word & bit != 0:
            reason = SKIP_SETTLED
        elif not key_ok[k]:
            reason = SKIP_KEY
        elif r.charge < min_charge_ or r.charge != (
            r.tokens_in * price_in[r.pipeline_index] + r.tokens_out * price_out[r.pipeline_index]
        ):
            reason = SKIP_CHARGE
        elif not pipe_ok[r.pipeline_index]:
            reason = SKIP_STAGE
        elif r.charge > cap_left[k] or r.charge > dep_left[payer[k]]:
            reason = SKIP_FUNDS
        if reason != 0:
            log RecordSkipped(gateway=msg.sender, seq=r.seq, reason=reason)
            continue
        word |= bit
        cap_left[k] -= r.charge
        dep_left[payer[k]] -= r.charge
        request_id: bytes32 = keccak256(abi_encode(chain.id, self, msg.sender, r.seq))
        key: bytes32 = keys[k]
        leaves[count] = batch_tree._leaf(
            request_id, key, r.pipeline_index, r.tokens_in, r.tokens_out, r.charge,
            r.commitment_root,
        )
        count += 1
        key_spend[k] += r.charge
        pipe_charge[r.pipeline_index] += r.charge
        total += r.charge
        log RequestSettled(
            batch_id=batch_id, request_id=request_id, key_hash=key, pipeline_index=r.pipeline_index,
            tokens_in=r.tokens_in, tokens_out=r.tokens_out, charge=r.charge,
            commitment_root=r.commitment_root,
        )
    self.settled_bits[msg.sender][word_index] = word
    if count == 0:
        return 0

    # Caps and deposits, once per key (checked record by record above).
    for j: uint256 in range(len(keys), bound=MAX_KEYS):
        spend: uint256 = key_spend[j]
        if spend == 0:
            continue
        api_keys.keys[keys[j]].spent += spend
        self.deposits[clients[j]] -= spend

    for p: uint256 in range(len(pipelines), bound=MAX_PIPELINES):
        if pipe_charge[p] != 0:
            self.pipeline_escrow[batch_id][p] = pipe_charge[p]

    root: bytes32 = batch_tree._merkle_root(leaves, count)
    release: uint256 = block.number + self.verification_window
    # block numbers < 2**48, shares <= 10,000 < 2**16: the fields cannot overlap.
    terms: uint256 = (
        convert(msg.sender, uint256) | (block.number << 160)
        | (self.protocol_fee_bps << 208) | (self.verifier_share_bps << 224)
    )
    self.batches[batch_id] = Batch(
        root=root, pipelines_hash=keccak256(abi_encode(pipelines)), release_block=release,
        terms=terms,
    )
    self.batch_count = batch_id
    self.gateway_open_batches[msg.sender] += 1
    self.total_deposits -= total
    self.total_escrow += total
    log BatchSettled(
        batch_id=batch_id, gateway=msg.sender, root=root, record_count=count, total_charge=total,
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
        assert staticcall ISlasher(self.verification).open_tasks(batch_id) == 0, (
            "payments: verification still open"
        )
    self.batches[batch_id].pipelines_hash = empty(bytes32)
    gateway: address = convert(b.terms & ((1 << 160) - 1), address)
    self.gateway_open_batches[gateway] -= 1
    fee_bps: uint256 = (b.terms >> 208) & 65535
    ver_bps: uint256 = (b.terms >> 224) & 65535
    fee_total: uint256 = 0
    ver_total: uint256 = 0
    ops_total: uint256 = 0
    for p: uint256 in range(len(pipelines), bound=MAX_PIPELINES):
        c: uint256 = self.pipeline_escrow[batch_id][p]
        if c == 0:
            continue
        self.pipeline_escrow[batch_id][p] = 0
        fee: uint256 = c * fee_bps // BPS
        ver: uint256 = c * ver_bps // BPS
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
    batch_id: uint256, request_id: bytes32, key: bytes32, pipeline_index: uint256, charge: uint256
):
    """@notice Return a convicted or unverifiable request's charge to its client's deposit
            (before release). The verification role proved the record in the batch."""
    assert msg.sender == self.verification, "payments: caller is not the verification role"
    b: Batch = self.batches[batch_id]
    assert b.root != empty(bytes32), "payments: unknown batch"
    assert b.pipelines_hash != empty(bytes32), "payments: batch already released"
    assert not self.refunded[request_id], "payments: already refunded"
    self.refunded[request_id] = True
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
@external
def batch_terms(batch_id: uint256) -> (address, uint256, uint256, uint256):
    """@notice (gateway, settle block, protocol fee bps, verifier share bps) of a batch."""
    t: uint256 = self.batches[batch_id].terms
    return (
        convert(t & ((1 << 160) - 1), address), (t >> 160) & ((1 << 48) - 1), (t >> 208) & 65535,
        (t >> 224) & 65535,
    )


@view
@internal
def _check_pipeline(p: Pipeline) -> (uint256, uint256, bool):
    layers: uint256 = 0
    pin: uint256 = 0
    pout: uint256 = 0
    active: bool = False
    live: bool = True
    layers, pin, pout, active = staticcall self.models.billing_info(p.model_id)
    assert layers != 0, "payments: unknown model"
    assert active, "payments: model inactive"
    assert len(p.stages) > 0, "payments: empty pipeline"
    at: uint256 = 0
    for s: Stage in p.stages:
        assert s.layer_start == at and s.layer_end > s.layer_start, (
            "payments: pipeline not contiguous"
        )
        live = live and staticcall self.registry.is_active(s.operator)
        at = s.layer_end
    assert at == layers, "payments: pipeline incomplete"
    return pin, pout, live
