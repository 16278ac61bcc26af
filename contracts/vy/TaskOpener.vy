# pragma version ~=0.4.3
"""
@title Veriplex task opener: who may put work into the verification game
@notice The only way a settled record enters the game. For a record of an unreleased batch that
        the batch's randomness samples, it checks: the record is in the batch (Merkle proof),
        the pipeline table is the batch's, the stage commitments hash to the record's root,
        the chosen stage's commitment carries its operator's signature (checked lazily here,
        so settlement stays cheap), and the commitment's shape is the one the model registry and
        the billed tokens imply (hidden size, L - 1 positions, L token ids on the first and last
        stage). A signed commitment that cannot be checked (zero root, wrong shape) voids the
        record; so does a sampled record nobody opened in time (its gateway could not show the
        signature). Voiding refunds the client and slashes the gateway's bond (Verification).
@dev Kept apart from Verification so both fit EIP-170. Stateless but for the batch seeds.
"""

from modules import batch_tree
from interfaces import IModelShape
from interfaces import IRandomness
from interfaces import IVerifierPayments

interface IKeys:
    def keys(key: bytes32) -> KeyState: view

struct KeyState:  # Payments.keys (modules/api_keys)
    client: address
    gateway: address
    cap: uint256
    expiry: uint256
    spent: uint256
    revoked: bool

interface IGame:
    def params() -> Params: view
    def tasks(task_id: uint256) -> GameTask: view
    def blame_input(task_id: uint256, prover: address): nonpayable
    def randomness() -> address: view
    def task_of(request_id: bytes32) -> uint256: view
    def start_task(
        batch_id: uint256, record: RecordLeaf, stage: uint256, stage_operator: address,
        layer_start: uint256, layer_end: uint256, sc: StageCommit, input_operator: address,
        input_commit: StageCommit, seed: bytes32, gateway: address, settle_block: uint256,
        void_reason: String[64], opener: address, chunk_rule: uint256,
    ) -> uint256: nonpayable


struct Stage:
    operator: address
    layer_start: uint256
    layer_end: uint256

struct Pipeline:
    model_id: uint256
    stages: DynArray[Stage, MAX_STAGES]

struct StageCommit:
    root: bytes32
    positions: uint32
    hidden_size: uint32
    n_tokens: uint32

struct RecordLeaf:
    request_id: bytes32
    key: bytes32
    pipeline_index: uint256
    tokens_in: uint256
    tokens_out: uint256
    charge: uint256
    commitment_root: bytes32

struct GameTask:  # Verification.Task, field for field (read through its public getter)
    status: uint8
    outcome_round: uint256
    batch_id: uint256
    record: RecordLeaf
    stage: uint256
    stage_operator: address
    stage_owner: address
    commit: StageCommit
    input_operator: address
    input_owner: address
    input_commit: StageCommit
    seed: bytes32
    snapshot_block: uint256
    anchor_block: uint256
    commit_deadline: uint256
    reveal_deadline: uint256
    spot_block: uint256
    open_deadline: uint256
    deadline: uint256
    round_first: uint256
    committed: uint256
    revealed: uint256
    chunk_rule: uint256

struct Params:
    sample_bps: uint256
    committee_size: uint256
    max_rounds: uint256
    commit_blocks: uint256
    reveal_blocks: uint256
    open_blocks: uint256
    randomness_delay: uint256
    spot_chunks: uint256
    max_ulp: uint256
    max_bad: uint256
    stage_slash: uint256
    verifier_slash: uint256
    verifier_reward: uint256
    gateway_slash: uint256
    open_task_blocks: uint256
    seat_stake: uint256
    jail_blocks: uint256
    suspect_threshold: uint256


BPS: constant(uint256) = 10_000
MAX_STAGES: constant(uint256) = 16
MAX_PIPELINES: constant(uint256) = 8
ATTESTATION_DOMAIN: constant(Bytes[24]) = b"veriplex-stage-commit-v1"

payments: public(IVerifierPayments)
models: public(IModelShape)
game: public(IGame)  # the Verification contract (wired once)
deployer: address
batch_seed: public(HashMap[uint256, bytes32])  # fixed on first use


@deploy
def __init__(payments_: IVerifierPayments, models_: IModelShape):
    self.payments = payments_
    self.models = models_
    self.deployer = msg.sender


@external
def wire(game_: IGame):
    """@notice Set the Verification contract (the deployer, once)."""
    assert msg.sender == self.deployer, "opener: caller is not the deployer"
    assert self.game.address == empty(address), "opener: already wired"
    self.game = game_


@external
def open_task(
    batch_id: uint256,
    record: RecordLeaf,
    proof: DynArray[bytes32, batch_tree.MAX_PROOF],
    pipelines: DynArray[Pipeline, MAX_PIPELINES],
    stage_commits: DynArray[StageCommit, MAX_STAGES],
    signature: Bytes[65],
) -> uint256:
    """
    @notice Open the task of a sampled record (see the contract notice). After the time to
            open (`open_task_blocks` past the batch's randomness) and before release, anyone
            may instead void a sampled record nobody opened: pass empty commitments and
            signature. Returns the task id (Verification numbering).
    """
    b: IVerifierPayments.Batch = staticcall self.payments.batches(batch_id)
    assert b.root != empty(bytes32), "opener: unknown batch"
    assert b.pipelines_hash != empty(bytes32), "opener: batch already released"
    assert staticcall self.game.task_of(record.request_id) == 0, "opener: task already open"
    leaf: bytes32 = batch_tree._leaf(
        record.request_id, record.key, record.pipeline_index, record.tokens_in, record.tokens_out,
        record.charge, record.commitment_root,
    )
    assert batch_tree._verify(proof, b.root, leaf), "opener: record not in batch"
    assert keccak256(abi_encode(pipelines)) == b.pipelines_hash, "opener: pipelines do not match batch"
    assert record.pipeline_index < len(pipelines), "opener: bad pipeline index"
    p: Params = staticcall self.game.params()
    settle_block: uint256 = (b.terms >> 160) & ((1 << 48) - 1)
    gateway: address = convert(b.terms & ((1 << 160) - 1), address)
    seed: bytes32 = self._batch_seed(batch_id, settle_block, p.randomness_delay)
    assert self._sampled(seed, record.request_id, p.sample_bps), "opener: request not sampled"
    empty_commit: StageCommit = empty(StageCommit)
    if block.number > settle_block + p.randomness_delay + p.open_task_blocks:
        return extcall self.game.start_task(
            batch_id, record, 0, empty(address), 0, 0, empty_commit, empty(address), empty_commit,
            seed, gateway, settle_block, "sampled record never opened", msg.sender, 0,
        )
    stages: DynArray[Stage, MAX_STAGES] = pipelines[record.pipeline_index].stages
    assert len(stage_commits) == len(stages), "opener: one commitment per stage"
    assert keccak256(abi_encode(stage_commits)) == record.commitment_root, (
        "opener: stage commitments do not match record"
    )
    stage: uint256 = convert(
        keccak256(abi_encode(seed, record.request_id, convert(1, uint256))), uint256
    ) % len(stages)
    sc: StageCommit = stage_commits[stage]
    op: address = stages[stage].operator
    assert self._signer(record.request_id, stage, sc, signature) == op, (
        "opener: stage did not sign this commitment"
    )
    input_op: address = empty(address)
    input_commit: StageCommit = empty_commit
    if stage > 0:
        input_op = stages[stage - 1].operator
        input_commit = stage_commits[stage - 1]
    model_id: uint256 = pipelines[record.pipeline_index].model_id
    # The model's registered chunk rule (its profile's D, K), fixed in the task: 1 << 64 | D << 8
    # | K; 0 when none is registered (the game's default applies).
    serving: IModelShape.Serving = staticcall self.models.serving(model_id)
    rule: uint256 = 0
    if serving.precision != 0:
        rule = (1 << 64) | (serving.max_ulp << 8) | serving.max_bad
    return extcall self.game.start_task(
        batch_id, record, stage, op, stages[stage].layer_start, stages[stage].layer_end, sc,
        input_op, input_commit, seed, gateway, settle_block,
        self._shape_fault(record, stage, len(stages), sc, input_commit, model_id), msg.sender, rule,
    )


@external
def blame_input(task_id: uint256, sc: StageCommit, signature: Bytes[65]):
    """
    @notice Stage-level blame. A stage commits only after checking that the commitment its
            input stage signed for the request (relayed by the gateway at COMMIT) is the one
            over the rows it received (node/dataplane: stored_requests). Whoever holds the
            input stage's signature on a commitment of the same request, stage index and shape
            as the one the record settled, but with another root, proves that the input stage
            sent this stage other rows than it committed: the checked stage is not judged on
            the settled rows; the input stage is slashed (the prover's share to the record's
            client) and jailed, and the task closed without a verdict, the record paid as
            settled (Verification.blame_input).
    """
    t: GameTask = staticcall self.game.tasks(task_id)
    assert t.input_operator != empty(address), "opener: the checked stage has no input stage"
    ic: StageCommit = t.input_commit
    assert (
        sc.positions == ic.positions and sc.hidden_size == ic.hidden_size
        and sc.n_tokens == ic.n_tokens
    ), "opener: not the settled commitment's shape"
    assert sc.root != ic.root, "opener: the settled commitment itself"
    assert self._signer(t.record.request_id, t.stage - 1, sc, signature) == t.input_operator, (
        "opener: input stage did not sign this commitment"
    )
    # The prover's share goes to the record's client, whoever submits the proof: copying the
    # transaction gains nothing, and a checked stage colluding with its input stage to escape its
    # own check gets none of the slash back (the record is paid as settled, so an honest checked
    # stage loses nothing).
    client: address = (staticcall IKeys(self.payments.address).keys(t.record.key)).client
    extcall self.game.blame_input(task_id, client)


@view
@external
def is_sampled(batch_id: uint256, request_id: bytes32) -> bool:
    """@notice Whether the batch's randomness selects `request_id` (reverts until it exists)."""
    p: Params = staticcall self.game.params()
    seed: bytes32 = self.batch_seed[batch_id]
    if seed == empty(bytes32):
        b: IVerifierPayments.Batch = staticcall self.payments.batches(batch_id)
        assert b.root != empty(bytes32), "opener: unknown batch"
        seed = self._fresh_seed(batch_id, (b.terms >> 160) & ((1 << 48) - 1), p.randomness_delay)
    return self._sampled(seed, request_id, p.sample_bps)


@view
@external
def stage_of(batch_id: uint256, request_id: bytes32, n_stages: uint256) -> uint256:
    """@notice The stage a sampled request's task checks (reverts until the seed exists)."""
    seed: bytes32 = self.batch_seed[batch_id]
    if seed == empty(bytes32):
        p: Params = staticcall self.game.params()
        b: IVerifierPayments.Batch = staticcall self.payments.batches(batch_id)
        seed = self._fresh_seed(batch_id, (b.terms >> 160) & ((1 << 48) - 1), p.randomness_delay)
    return convert(keccak256(abi_encode(seed, request_id, convert(1, uint256))), uint256) % n_stages


@view
@external
def attestation_digest(request_id: bytes32, stage: uint256, sc: StageCommit) -> bytes32:
    """@notice What a stage operator signs for its commitment (contracts.verification)."""
    return self._digest(request_id, stage, sc)


@view
@internal
def _shape_fault(
    record: RecordLeaf, stage: uint256, n_stages: uint256, sc: StageCommit, input_commit: StageCommit,
    model_id: uint256,
) -> String[64]:
    # The shape the record bills: L tokens, L - 1 computed positions, the model's hidden size;
    # the first and the last stage also commit the L token ids (verifier/ENCODING.md).
    if sc.root == empty(bytes32):
        return "zero commitment root"
    L: uint256 = record.tokens_in + record.tokens_out
    if L < 2 or convert(sc.positions, uint256) != L - 1:
        return "positions do not match billed tokens"
    m: IModelShape.Model = staticcall self.models.models(model_id)
    if convert(sc.hidden_size, uint256) != m.hidden_size:
        return "hidden size does not match the model"
    want_tokens: uint256 = 0
    if stage == 0 or stage == n_stages - 1:
        want_tokens = L
    if convert(sc.n_tokens, uint256) != want_tokens:
        return "token count does not match billed tokens"
    # The input stage's commitment is what members re-execute from: the same rows and width.
    if stage > 0 and (
        input_commit.positions != sc.positions or input_commit.hidden_size != sc.hidden_size
    ):
        return "input commitment shape does not match"
    return ""


@view
@internal
def _digest(request_id: bytes32, stage: uint256, sc: StageCommit) -> bytes32:
    return keccak256(
        concat(
            ATTESTATION_DOMAIN, convert(convert(chain.id, uint64), bytes8), request_id,
            convert(convert(stage, uint16), bytes2), sc.root, convert(sc.positions, bytes4),
            convert(sc.hidden_size, bytes4), convert(sc.n_tokens, bytes4),
        )
    )


@view
@internal
def _signer(request_id: bytes32, stage: uint256, sc: StageCommit, sig: Bytes[65]) -> address:
    if len(sig) != 65:
        return empty(address)
    r: uint256 = extract32(sig, 0, output_type=uint256)
    s: uint256 = extract32(sig, 32, output_type=uint256)
    v: uint256 = convert(slice(sig, 64, 1), uint256)
    if v < 27:
        v += 27
    return ecrecover(self._digest(request_id, stage, sc), v, r, s)


@view
@internal
def _fresh_seed(batch_id: uint256, settle_block: uint256, delay: uint256) -> bytes32:
    source: IRandomness = IRandomness(staticcall self.game.randomness())
    return keccak256(abi_encode(staticcall source.value(settle_block + delay), batch_id))


@internal
def _batch_seed(batch_id: uint256, settle_block: uint256, delay: uint256) -> bytes32:
    seed: bytes32 = self.batch_seed[batch_id]
    if seed == empty(bytes32):
        seed = self._fresh_seed(batch_id, settle_block, delay)
        self.batch_seed[batch_id] = seed
    return seed


@pure
@internal
def _sampled(seed: bytes32, request_id: bytes32, sample_bps: uint256) -> bool:
    return convert(keccak256(abi_encode(seed, request_id, convert(0, uint256))), uint256) % BPS < sample_bps
