# pragma version ~=0.4.3
# pragma optimize codesize
"""
@title Veriplex verification game
@notice Checks settled requests after the fact, so that honest play is every party's best
        strategy. Randomness fixed only after a batch settles samples requests with probability
        `sample_bps`. The batch's gateway (anyone holding the signatures) opens a task for each
        sampled record before `open_task_blocks` pass: the record is proven in its batch, the
        chosen stage's commitment must carry its operator's signature (checked here, lazily, so
        settlement stays cheap) and the shape the model registry and the billed tokens imply.
        A sampled record nobody opened in time, or one whose attested commitment cannot be
        checked (zero root, wrong shape), is refunded and the gateway's bond is slashed.
        A committee is drawn by stake as it stood when the batch settled (Committee.vy); members
        commit keccak(task, member, kind, own output root, named leaf, salt), then reveal. An
        accuser names the (position, chunk) leaf that fails (a token leaf when chunk is TOKEN);
        random spots are added; the stage and every member open all of them. A leaf is bad when
        the members' opened evidence there disagrees with the stage's more often than it agrees.
        A bad leaf convicts the stage (FRAUD: slashed, jailed, client refunded); accusers whose
        leaf stood share the slash; a verdict is punished only when the opened evidence shows it
        wrong; a tie escalates to a larger committee drawn from a fresh block. V_SUSPECT verdicts
        (statistical evidence) never slash: they count per operator and jail past a threshold.
        A member that could not get its inputs reveals V_NO_INPUT; the input stage must then open
        the spots of its own output or be slashed. Every task has a hard deadline after which it
        closes UNRESOLVED (no rewards), so no escrow waits on a stale task. Stage, input stage
        and members are locked in the registry (no withdrawal) while the task is open.
@dev Status: VOTING -(close_votes)-> OPENING -(finalize)-> PASSED | FRAUD | SUSPECTED |
     UNRESOLVED, or DRAWING (escalation, waits for a fresh block) -(next_round)-> VOTING;
     VOID at open_task or claim_unopened; anything open -(expire, after the deadline)->
     UNRESOLVED. `open_tasks[batch]` counts tasks not yet closed; Payments will not release a
     batch with open tasks. Record commitment_root = keccak256(abi_encode(StageCommit[])).
"""

from snekmate.auth import ownable
from snekmate.auth import ownable_2step

from modules import batch_tree
from modules import timelock
from interfaces import ICommittee
from interfaces import IModelShape
from interfaces import IRandomness
from interfaces import ISpotCheck
from interfaces import IVerifierRegistry
from interfaces import IVerifierPayments

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

struct Stage:
    operator: address
    layer_start: uint256
    layer_end: uint256

struct Pipeline:
    model_id: uint256
    stages: DynArray[Stage, MAX_STAGES]

struct StageCommit:
    root: bytes32  # verifier/ENCODING.md root (binds the shape below)
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

struct Opening:
    hi: bytes32  # values 0..15 of the chunk, bf16 big-endian (token leaf: the token id)
    lo: bytes32  # values 16..31 (token leaf: zero)
    siblings: DynArray[bytes32, MAX_DEPTH]

struct Params:
    sample_bps: uint256  # probability a settled request is checked
    committee_size: uint256  # first round; doubles per escalation
    max_rounds: uint256
    commit_blocks: uint256
    reveal_blocks: uint256
    open_blocks: uint256
    randomness_delay: uint256  # blocks between an event and the block whose randomness is used
    spot_chunks: uint256  # random leaves every party opens, besides the named ones
    max_ulp: uint256  # chunk rule D
    max_bad: uint256  # chunk rule K
    stage_slash: uint256  # wei
    verifier_slash: uint256  # wei
    verifier_reward: uint256  # wei: cap per member (paid from the record's verification share)
    gateway_slash: uint256  # wei of bond per unattested or unverifiable record
    open_task_blocks: uint256  # after the batch's randomness, to open its sampled tasks
    seat_stake: uint256  # wei: stake at which a node's seat probability saturates
    jail_blocks: uint256  # jail term of a convicted stage
    suspect_threshold: uint256  # V_SUSPECT outcomes that jail an operator

struct Task:
    status: uint8
    outcome_round: uint256  # current round (0-based)
    batch_id: uint256
    record: RecordLeaf
    stage: uint256
    stage_operator: address
    stage_owner: address
    commit: StageCommit
    input_operator: address  # the previous stage (none for stage 0)
    input_owner: address
    input_commit: StageCommit
    seed: bytes32  # the batch's sampling randomness
    snapshot_block: uint256  # stakes as of this block seat committees (the settle block)
    anchor_block: uint256  # the round's committee randomness (escalation: a fresh block)
    commit_deadline: uint256
    reveal_deadline: uint256
    spot_block: uint256
    open_deadline: uint256
    deadline: uint256  # hard: after it, expire() closes the task
    round_first: uint256  # index in `members[task]` where the current round starts
    committed: uint256  # this round
    revealed: uint256  # this round

struct Member:
    owner: address
    round: uint256
    commitment: bytes32
    kind: uint8  # 0 until revealed; V_PASS, FRAUD, V_SUSPECT, V_NO_INPUT
    output_root: bytes32
    leaf: uint256  # position << 16 | chunk, the leaf a FRAUD names
    opened: bool
    slashed: bool


# ------------------------------------------------------------------ EVENTS

event ParamsSet:
    params: Params

event RandomnessSet:
    source: indexed(address)

event TaskOpened:
    task_id: indexed(uint256)
    batch_id: indexed(uint256)
    request_id: indexed(bytes32)
    stage: uint256
    stage_operator: address
    layer_start: uint256
    layer_end: uint256
    stage_commit: StageCommit
    input_operator: address
    input_root: bytes32
    seed: bytes32
    deadline: uint256
    opener: address

event TaskVoided:
    task_id: indexed(uint256)
    batch_id: indexed(uint256)
    request_id: indexed(bytes32)
    gateway: address
    reason: String[64]
    gateway_slashed: uint256
    refunded: uint256

event CommitteeSelected:
    task_id: indexed(uint256)
    round: uint256
    members: DynArray[address, MAX_COMMITTEE]
    stakes: DynArray[uint256, MAX_COMMITTEE]
    seed: bytes32
    commit_deadline: uint256
    reveal_deadline: uint256

event VerdictCommitted:
    task_id: indexed(uint256)
    member: indexed(address)
    commitment: bytes32

event VerdictRevealed:
    task_id: indexed(uint256)
    member: indexed(address)
    kind: uint8
    output_root: bytes32
    position: uint32
    chunk: uint16
    salt: bytes32

event VotesClosed:
    task_id: indexed(uint256)
    round: uint256
    revealed: uint256
    spot_block: uint256
    open_deadline: uint256

event ChunksOpened:
    task_id: indexed(uint256)
    party: indexed(address)
    round: uint256
    positions: DynArray[uint32, MAX_LEAVES]
    chunks: DynArray[uint16, MAX_LEAVES]
    his: DynArray[bytes32, MAX_LEAVES]
    los: DynArray[bytes32, MAX_LEAVES]

event LeafJudged:
    task_id: indexed(uint256)
    round: uint256
    position: uint32
    chunk: uint16
    agree: uint256  # members whose opened leaf passes the rule against the stage's
    disagree: uint256

event MemberSlashed:
    task_id: indexed(uint256)
    member: indexed(address)
    owner: indexed(address)
    amount: uint256
    reason: String[128]

event StageSlashed:
    task_id: indexed(uint256)
    stage_operator: indexed(address)
    owner: indexed(address)
    amount: uint256
    prover: address
    reason: String[128]

event StageSuspected:
    task_id: indexed(uint256)
    owner: indexed(address)
    count: uint256
    jailed: bool

event TaskEscalated:
    task_id: indexed(uint256)
    round: uint256
    passes: uint256
    fails: uint256
    anchor_block: uint256

event TaskFinalized:
    task_id: indexed(uint256)
    batch_id: indexed(uint256)
    request_id: indexed(bytes32)
    status: uint8
    round: uint256
    passes: uint256
    fails: uint256

event VerifierRewarded:
    task_id: indexed(uint256)
    member: indexed(address)
    owner: indexed(address)
    amount: uint256
    agreeing: uint256
    peers: uint256

event ClientRefunded:
    task_id: indexed(uint256)
    batch_id: indexed(uint256)
    request_id: indexed(bytes32)
    charge: uint256


# ------------------------------------------------------------------ STORAGE

BPS: constant(uint256) = 10_000
MAX_STAGES: constant(uint256) = 16
MAX_PIPELINES: constant(uint256) = 8
MAX_COMMITTEE: constant(uint256) = 16
MAX_MEMBERS: constant(uint256) = 32  # over all rounds of one task
MAX_EXCLUDED: constant(uint256) = 40
MAX_SPOTS: constant(uint256) = 4
MAX_LEAVES: constant(uint256) = 20  # random spots + one named leaf per member of a round
MAX_ROUNDS: constant(uint256) = 3
MAX_DEPTH: constant(uint256) = 40  # proof siblings (SpotCheck)
TOKEN: constant(uint16) = 65535  # chunk value naming a token leaf

ABSENT: constant(uint8) = 0
VOTING: constant(uint8) = 1
OPENING: constant(uint8) = 2
PASSED: constant(uint8) = 3
FRAUD: constant(uint8) = 4
REFUNDED: constant(uint8) = 5  # (kept for indexers of older tasks: FRAUD now refunds at once)
UNRESOLVED: constant(uint8) = 6
DRAWING: constant(uint8) = 7
VOID: constant(uint8) = 8
SUSPECTED: constant(uint8) = 9

V_PASS: constant(uint8) = 1
V_FAIL: constant(uint8) = 2
V_SUSPECT: constant(uint8) = 3
V_NO_INPUT: constant(uint8) = 4

ATTESTATION_DOMAIN: constant(Bytes[24]) = b"veriplex-stage-commit-v1"

registry: public(IVerifierRegistry)
payments: public(IVerifierPayments)
models: public(IModelShape)
randomness: public(IRandomness)
spot_check: public(ISpotCheck)
committee_draw: public(ICommittee)
params: public(Params)

task_count: public(uint256)
tasks: public(HashMap[uint256, Task])  # ids start at 1
task_of: public(HashMap[bytes32, uint256])  # request id -> task id
open_tasks: public(HashMap[uint256, uint256])  # batch id -> tasks not yet closed
batch_seed: public(HashMap[uint256, bytes32])  # fixed on first use
suspects: public(HashMap[address, uint256])  # owner -> V_SUSPECT outcomes since its last jail
members: HashMap[uint256, DynArray[address, MAX_MEMBERS]]  # operators, all rounds
member: public(HashMap[uint256, HashMap[address, Member]])  # task -> operator -> state
named: HashMap[uint256, DynArray[uint256, MAX_LEAVES]]  # task -> this round's named leaves
stage_opened: public(HashMap[uint256, HashMap[uint256, bool]])  # task -> round -> opened
input_opened: public(HashMap[uint256, HashMap[uint256, bool]])  # task -> round -> opened
# task -> party -> leaf index (spots, then named) -> (hi, lo); a round overwrites the last
chunks: HashMap[uint256, HashMap[address, HashMap[uint256, bytes32[2]]]]


# ------------------------------------------------------------------ CONSTRUCTOR

@deploy
def __init__(
    registry_: IVerifierRegistry, payments_: IVerifierPayments, models_: IModelShape,
    randomness_: IRandomness, spot_check_: ISpotCheck, committee_: ICommittee, params_: Params,
    timelock_delay_: uint256,
):
    ownable.__init__()
    ownable_2step.__init__()
    timelock.__init__(timelock_delay_)
    self.registry = registry_
    self.payments = payments_
    self.models = models_
    self.spot_check = spot_check_
    self.committee_draw = committee_
    assert randomness_.address != empty(address), "verification: randomness is the zero address"
    self.randomness = randomness_
    log RandomnessSet(source=randomness_.address)
    self._set_params(params_)


# ------------------------------------------------------------------ ADMIN (timelocked)

@external
def queue(op: bytes32):
    """@notice Announce `set_params`/`set_randomness` (ids from `params_op`/`randomness_op`)."""
    ownable._check_owner()
    timelock._queue(op)


@external
def set_params(params_: Params):
    """@notice Change parameters after the timelock. Open tasks keep their deadlines."""
    ownable._check_owner()
    timelock._execute(keccak256(abi_encode(params_)))
    self._set_params(params_)


@external
def set_randomness(source: IRandomness):
    ownable._check_owner()
    timelock._execute(keccak256(abi_encode(source.address)))
    assert source.address != empty(address), "verification: randomness is the zero address"
    self.randomness = source
    log RandomnessSet(source=source.address)


@pure
@external
def params_op(params_: Params) -> bytes32:
    return keccak256(abi_encode(params_))


@pure
@external
def randomness_op(source: address) -> bytes32:
    return keccak256(abi_encode(source))


@internal
def _set_params(p: Params):
    assert p.sample_bps > 0 and p.sample_bps <= BPS, "verification: sample rate outside 1..10000"
    assert p.committee_size > 0 and p.committee_size <= MAX_COMMITTEE, (
        "verification: committee size outside 1..16"
    )
    assert p.max_rounds > 0 and p.max_rounds <= MAX_ROUNDS, "verification: rounds outside 1..3"
    assert p.commit_blocks > 0 and p.reveal_blocks > 0 and p.open_blocks > 0, (
        "verification: zero phase length"
    )
    assert p.randomness_delay > 0, "verification: randomness delay is zero"
    assert p.spot_chunks > 0 and p.spot_chunks <= MAX_SPOTS, "verification: spot chunks outside 1..4"
    assert p.max_bad < 32, "verification: max_bad must be below 32"
    assert p.open_task_blocks > 0 and p.seat_stake > 0, "verification: zero open window or seat"
    assert p.suspect_threshold > 0, "verification: suspect threshold is zero"
    self.params = p
    # Cross-contract rules, on every change: tasks fit the window; nobody leaves before judgment.
    window: uint256 = staticcall self.payments.verification_window()
    assert window >= self._min_window(p), "verification: payments window too short to open tasks"
    assert staticcall self.registry.unbonding_period() >= window + self._lifetime(p), (
        "verification: unbonding shorter than window + task lifetime"
    )
    log ParamsSet(params=p)


# ------------------------------------------------------------------ OPEN (anyone)

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
    @notice Start checking a sampled request. `stage_commits` must hash to the record's
            commitment root; `signature` is the chosen stage operator's over its commitment
            (`attestation_digest`). An attested commitment that cannot be checked voids the
            record: the client is refunded, the gateway's bond slashed.
    """
    b: IVerifierPayments.Batch = self._record_batch(batch_id, record, proof, pipelines)
    p: Params = self.params
    settle_block: uint256 = (b.terms >> 160) & ((1 << 48) - 1)
    assert block.number <= settle_block + p.randomness_delay + p.open_task_blocks, (
        "verification: too late to open"
    )
    stages: DynArray[Stage, MAX_STAGES] = pipelines[record.pipeline_index].stages
    assert len(stage_commits) == len(stages), "verification: one commitment per stage"
    assert keccak256(abi_encode(stage_commits)) == record.commitment_root, (
        "verification: stage commitments do not match record"
    )
    seed: bytes32 = self._batch_seed(batch_id, settle_block)
    assert self._sampled(seed, record.request_id), "verification: request not sampled"
    stage: uint256 = convert(
        keccak256(abi_encode(seed, record.request_id, convert(1, uint256))), uint256
    ) % len(stages)
    sc: StageCommit = stage_commits[stage]
    op: address = stages[stage].operator
    assert self._signer(record.request_id, stage, sc, signature) == op, (
        "verification: stage did not sign this commitment"
    )
    task_id: uint256 = self._new_task(batch_id, record.request_id)
    gateway: address = convert(b.terms & ((1 << 160) - 1), address)
    bad: String[64] = self._shape_fault(record, stage, len(stages), sc, pipelines[record.pipeline_index].model_id)
    if bad != "":
        self.tasks[task_id].status = VOID
        self._void(task_id, batch_id, record, gateway, bad)
        return task_id

    self.open_tasks[batch_id] += 1
    t: Task = empty(Task)
    t.status = VOTING
    t.batch_id = batch_id
    t.record = record
    t.stage = stage
    t.stage_operator = op
    t.stage_owner = staticcall self.registry.owner_of_operator(op)
    t.commit = sc
    if stage > 0:
        t.input_operator = stages[stage - 1].operator
        t.input_owner = staticcall self.registry.owner_of_operator(t.input_operator)
        t.input_commit = stage_commits[stage - 1]
    t.seed = seed
    t.snapshot_block = settle_block
    t.deadline = block.number + self._lifetime(p)
    self.tasks[task_id] = t
    extcall self.registry.lock(t.stage_owner)
    log TaskOpened(
        task_id=task_id, batch_id=batch_id, request_id=record.request_id, stage=stage,
        stage_operator=op, layer_start=stages[stage].layer_start,
        layer_end=stages[stage].layer_end, stage_commit=sc, input_operator=t.input_operator,
        input_root=t.input_commit.root, seed=seed, deadline=t.deadline, opener=msg.sender,
    )
    n: uint256 = self._start_round(
        task_id, 0, keccak256(abi_encode(seed, record.request_id, convert(2, uint256)))
    )
    assert n > 0, "verification: no eligible verifier"
    return task_id


@external
def claim_unopened(
    batch_id: uint256,
    record: RecordLeaf,
    proof: DynArray[bytes32, batch_tree.MAX_PROOF],
    pipelines: DynArray[Pipeline, MAX_PIPELINES],
) -> uint256:
    """
    @notice After the time to open tasks, before release: a sampled record nobody opened (its
            gateway could not show the stage's signature) is refunded and the gateway's bond
            slashed, part of it to the caller.
    """
    b: IVerifierPayments.Batch = self._record_batch(batch_id, record, proof, pipelines)
    p: Params = self.params
    settle_block: uint256 = (b.terms >> 160) & ((1 << 48) - 1)
    assert block.number > settle_block + p.randomness_delay + p.open_task_blocks, (
        "verification: tasks may still be opened"
    )
    seed: bytes32 = self._batch_seed(batch_id, settle_block)
    assert self._sampled(seed, record.request_id), "verification: request not sampled"
    task_id: uint256 = self._new_task(batch_id, record.request_id)
    self.tasks[task_id].status = VOID
    self._void(
        task_id, batch_id, record, convert(b.terms & ((1 << 160) - 1), address),
        "sampled record never opened",
    )
    return task_id


# ------------------------------------------------------------------ VOTE (committee)

@external
def commit_verdict(task_id: uint256, commitment: bytes32):
    """@notice commitment = keccak256(abi_encode(task_id, member, kind, output_root, position,
            chunk, salt)) (`verdict_commitment`)."""
    t: Task = self._task(task_id)
    assert t.status == VOTING, "verification: not voting"
    assert block.number <= t.commit_deadline, "verification: commit deadline passed"
    m: Member = self._current_member(task_id, t)
    assert m.commitment == empty(bytes32), "verification: already committed"
    assert commitment != empty(bytes32), "verification: empty commitment"
    self.member[task_id][msg.sender].commitment = commitment
    self.tasks[task_id].committed = t.committed + 1
    log VerdictCommitted(task_id=task_id, member=msg.sender, commitment=commitment)


@external
def reveal_verdict(
    task_id: uint256, kind: uint8, output_root: bytes32, position: uint32, chunk: uint16,
    salt: bytes32,
):
    """@notice Open the commitment: once every member committed or the commit deadline passed.
            A V_FAIL names the leaf (position, chunk) where the stage's output fails."""
    t: Task = self._task(task_id)
    assert t.status == VOTING, "verification: not voting"
    assert block.number > t.commit_deadline or t.committed == self._round_size(task_id, t), (
        "verification: commits still open"
    )
    assert block.number <= t.reveal_deadline, "verification: reveal deadline passed"
    assert kind >= V_PASS and kind <= V_NO_INPUT, "verification: unknown verdict kind"
    m: Member = self._current_member(task_id, t)
    assert m.commitment != empty(bytes32), "verification: nothing committed"
    assert m.kind == 0, "verification: already revealed"
    assert keccak256(
        abi_encode(task_id, msg.sender, kind, output_root, position, chunk, salt)
    ) == m.commitment, "verification: reveal does not match commitment"
    leaf: uint256 = (convert(position, uint256) << 16) | convert(chunk, uint256)
    if kind == V_FAIL:
        self._check_leaf(t.commit, position, chunk)
        if leaf not in self.named[task_id]:
            self.named[task_id].append(leaf)
    self.member[task_id][msg.sender].kind = kind
    self.member[task_id][msg.sender].output_root = output_root
    self.member[task_id][msg.sender].leaf = leaf
    self.tasks[task_id].revealed = t.revealed + 1
    log VerdictRevealed(
        task_id=task_id, member=msg.sender, kind=kind, output_root=output_root,
        position=position, chunk=chunk, salt=salt,
    )


@external
def close_votes(task_id: uint256):
    """
    @notice End the vote (anyone): after the reveal deadline, or once every member revealed.
            Members who did not reveal are slashed; the spot randomness is a later block.
    """
    t: Task = self._task(task_id)
    assert t.status == VOTING, "verification: not voting"
    size: uint256 = self._round_size(task_id, t)
    assert block.number > t.reveal_deadline or t.revealed == size, "verification: reveals still open"
    for i: uint256 in range(t.round_first, t.round_first + size, bound=MAX_MEMBERS):
        op: address = self.members[task_id][i]
        if self.member[task_id][op].kind == 0:
            self._slash_member(task_id, op, "verification: verdict not revealed")
    p: Params = self.params
    spot: uint256 = block.number + p.randomness_delay
    deadline: uint256 = spot + p.open_blocks
    self.tasks[task_id].status = OPENING
    self.tasks[task_id].spot_block = spot
    self.tasks[task_id].open_deadline = deadline
    log VotesClosed(
        task_id=task_id, round=t.outcome_round, revealed=t.revealed, spot_block=spot,
        open_deadline=deadline,
    )


# ------------------------------------------------------------------ OPENINGS (anyone)

@view
@external
def spot_checks(task_id: uint256) -> (DynArray[uint32, MAX_LEAVES], DynArray[uint16, MAX_LEAVES]):
    """@notice (positions, chunks) every party opens this round: random spots, then the named
            leaves (reverts until the spot block is final)."""
    t: Task = self._task(task_id)
    assert t.status == OPENING, "verification: not opening"
    return self._leaves(task_id, t)


@external
def open_chunks(task_id: uint256, party: address, openings: DynArray[Opening, MAX_LEAVES]):
    """
    @notice Open every leaf of `spot_checks` for `party`: the stage operator (anyone holding its
            rows may), a revealed member (against its own output root), or the input stage when
            a member reported V_NO_INPUT (only the random spots, against its own root).
    """
    t: Task = self._task(task_id)
    assert t.status == OPENING, "verification: not opening"
    assert block.number <= t.open_deadline, "verification: open deadline passed"
    r: uint256 = t.outcome_round
    root: bytes32 = empty(bytes32)
    sc: StageCommit = t.commit
    stage: uint256 = t.stage
    positions: DynArray[uint32, MAX_LEAVES] = []
    cks: DynArray[uint16, MAX_LEAVES] = []
    positions, cks = self._leaves(task_id, t)
    if party == t.stage_operator:
        assert not self.stage_opened[task_id][r], "verification: already opened"
        root = sc.root
        self.stage_opened[task_id][r] = True
    elif party == t.input_operator and party != empty(address):
        assert not self.input_opened[task_id][r], "verification: already opened"
        sc = t.input_commit
        root = sc.root
        stage -= 1
        self.input_opened[task_id][r] = True
        n_spots: uint256 = self.params.spot_chunks
        for _: uint256 in range(MAX_LEAVES):
            if len(positions) <= n_spots:
                break
            positions.pop()
            cks.pop()
    else:
        m: Member = self.member[task_id][party]
        assert m.owner != empty(address) and m.round == r and m.kind != 0, (
            "verification: party has no revealed verdict"
        )
        assert m.kind != V_NO_INPUT, "verification: party reported no input"
        assert not m.opened, "verification: already opened"
        root = m.output_root
        self.member[task_id][party].opened = True
    assert len(openings) == len(positions), "verification: wrong number of openings"
    his: DynArray[bytes32, MAX_LEAVES] = []
    los: DynArray[bytes32, MAX_LEAVES] = []
    for k: uint256 in range(len(openings), bound=MAX_LEAVES):
        o: Opening = openings[k]
        got: bytes32 = empty(bytes32)
        if cks[k] == TOKEN:
            assert o.lo == empty(bytes32) and convert(o.hi, uint256) < 2**32, (
                "verification: malformed token opening"
            )
            got = staticcall self.spot_check.token_root(
                convert(chain.id, uint64), t.record.request_id, convert(stage, uint16),
                sc.positions, sc.hidden_size, sc.n_tokens, positions[k],
                convert(convert(o.hi, uint256), uint32), o.siblings,
            )
        else:
            got = staticcall self.spot_check.chunk_root(
                convert(chain.id, uint64), t.record.request_id, convert(stage, uint16),
                sc.positions, sc.hidden_size, sc.n_tokens, positions[k], cks[k], o.hi, o.lo,
                o.siblings,
            )
            self._check_padding(sc.hidden_size, cks[k], o.hi, o.lo)
        assert got == root, "verification: opening does not match root"
        self.chunks[task_id][party][k] = [o.hi, o.lo]
        his.append(o.hi)
        los.append(o.lo)
    log ChunksOpened(
        task_id=task_id, party=party, round=r, positions=positions, chunks=cks, his=his, los=los
    )


# ------------------------------------------------------------------ JUDGE (anyone)

@external
def finalize(task_id: uint256):
    """
    @notice Judge the round (anyone): after the open deadline, or once the stage and every
            revealed member opened. See the contract notice for the rule.
    """
    t: Task = self._task(task_id)
    assert t.status == OPENING, "verification: not opening"
    r: uint256 = t.outcome_round
    size: uint256 = self._round_size(task_id, t)
    stage_open: bool = self.stage_opened[task_id][r]
    all_open: bool = stage_open
    for i: uint256 in range(t.round_first, t.round_first + size, bound=MAX_MEMBERS):
        m: Member = self.member[task_id][self.members[task_id][i]]
        if m.kind != 0 and m.kind != V_NO_INPUT and not m.opened:
            all_open = False
    assert block.number > t.open_deadline or all_open, "verification: openings still open"

    p: Params = self.params
    n_leaves: uint256 = p.spot_chunks + len(self.named[task_id])
    # Pass 1: who opened, and each opened member's agreement with the stage, leaf by leaf.
    agree_n: uint256[MAX_LEAVES] = empty(uint256[MAX_LEAVES])
    disagree_n: uint256[MAX_LEAVES] = empty(uint256[MAX_LEAVES])
    masks: uint256[MAX_COMMITTEE] = empty(uint256[MAX_COMMITTEE])  # bit k: agrees at leaf k
    no_input: uint256 = 0
    voters: uint256 = 0
    for i: uint256 in range(size, bound=MAX_COMMITTEE):
        op: address = self.members[task_id][t.round_first + i]
        m: Member = self.member[task_id][op]
        if m.kind == 0 or m.slashed:
            continue
        if m.kind == V_NO_INPUT:
            no_input += 1
            continue
        if not m.opened:
            self._slash_member(task_id, op, "verification: evidence not opened")
            continue
        voters += 1
        if not stage_open:
            continue
        for k: uint256 in range(n_leaves, bound=MAX_LEAVES):
            if self._agree(task_id, t.stage_operator, op, k, p):
                masks[i] |= 1 << k
                agree_n[k] += 1
            else:
                disagree_n[k] += 1

    # Leaves the majority of opened evidence shows wrong.
    bad: uint256 = 0  # bit k
    tie: bool = False
    pos: DynArray[uint32, MAX_LEAVES] = []
    cks: DynArray[uint16, MAX_LEAVES] = []
    if stage_open and voters > 0:
        pos, cks = self._leaves(task_id, t)
        for k: uint256 in range(n_leaves, bound=MAX_LEAVES):
            if disagree_n[k] > agree_n[k]:
                bad |= 1 << k
            elif disagree_n[k] == agree_n[k] and disagree_n[k] > 0:
                tie = True
            log LeafJudged(
                task_id=task_id, round=r, position=pos[k], chunk=cks[k], agree=agree_n[k],
                disagree=disagree_n[k],
            )

    # Pass 2: verdicts the evidence shows wrong; count the standing ones.
    passes: uint256 = 0
    fails: uint256 = 0
    suspects: uint256 = 0
    for i: uint256 in range(size, bound=MAX_COMMITTEE):
        op: address = self.members[task_id][t.round_first + i]
        m: Member = self.member[task_id][op]
        if m.kind == 0 or m.kind == V_NO_INPUT or m.slashed:
            continue
        if stage_open:
            full: uint256 = (1 << n_leaves) - 1
            named_k: uint256 = self._named_index(task_id, m.leaf, p.spot_chunks)
            if m.kind == V_PASS and (masks[i] != full or bad != 0):
                # own evidence disagrees with the stage, or the stage is shown wrong
                self._slash_member(task_id, op, "verification: pass contradicted by evidence")
                continue
            if m.kind == V_FAIL and (masks[i] >> named_k) & 1 == 1:
                self._slash_member(task_id, op, "verification: own evidence agrees at named leaf")
                continue
            if m.kind == V_FAIL and bad == 0 and not tie:
                self._slash_member(task_id, op, "verification: named leaf outweighed by evidence")
                continue
            if m.kind == V_FAIL and bad != 0 and (bad >> named_k) & 1 == 0:
                self._slash_member(task_id, op, "verification: named leaf is not faulty")
                continue
        if m.kind == V_PASS:
            passes += 1
        elif m.kind == V_FAIL:
            fails += 1
        else:
            suspects += 1

    # Data availability: members said they got no input; the input stage had to open its spots.
    if no_input > 0 and t.input_operator != empty(address) and not self.input_opened[task_id][r]:
        taken: uint256 = self._slash(
            t.input_owner, p.stage_slash, msg.sender, "verification: inputs withheld"
        )
        log StageSlashed(
            task_id=task_id, stage_operator=t.input_operator, owner=t.input_owner, amount=taken,
            prover=msg.sender, reason="verification: inputs withheld",
        )

    status: uint8 = ABSENT
    if not stage_open and voters > 0:
        status = FRAUD  # the stage could not (and nobody could for it) open its own commitment
    elif bad != 0:
        status = FRAUD
    elif not tie and passes > 0:
        status = PASSED
    elif not tie and suspects > 0 and fails == 0:
        status = SUSPECTED
    if status == ABSENT and r + 1 < p.max_rounds:
        # A split or an empty round: a larger committee, seated from a block not yet mined.
        anchor: uint256 = block.number + p.randomness_delay
        self.tasks[task_id].status = DRAWING
        self.tasks[task_id].anchor_block = anchor
        self.tasks[task_id].outcome_round = r + 1
        log TaskEscalated(task_id=task_id, round=r + 1, passes=passes, fails=fails, anchor_block=anchor)
        return
    if status == ABSENT:
        status = UNRESOLVED
    self._close(task_id, t, status, passes, fails, bad, p.spot_chunks)


@external
def next_round(task_id: uint256):
    """@notice Seat an escalated round's committee (anyone) from its fresh anchor block."""
    t: Task = self._task(task_id)
    assert t.status == DRAWING, "verification: not drawing"
    seed: bytes32 = keccak256(
        abi_encode(staticcall self.randomness.value(t.anchor_block), task_id, t.outcome_round)
    )
    self.named[task_id] = []
    if self._start_round(task_id, t.outcome_round, seed) == 0:
        self._close(task_id, t, UNRESOLVED, 0, 0, 0, 0)  # nobody left to ask


@external
def expire(task_id: uint256):
    """@notice Close a task past its hard deadline (anyone): UNRESOLVED, no rewards, escrow free."""
    t: Task = self._task(task_id)
    assert t.status == VOTING or t.status == OPENING or t.status == DRAWING, (
        "verification: task closed"
    )
    assert block.number > t.deadline, "verification: deadline not reached"
    self._close(task_id, t, UNRESOLVED, 0, 0, 0, 0)


# ------------------------------------------------------------------ VIEWS

@view
@external
def is_sampled(batch_id: uint256, request_id: bytes32) -> bool:
    """@notice Whether the batch's randomness selects `request_id` (reverts until it exists)."""
    seed: bytes32 = self.batch_seed[batch_id]
    if seed == empty(bytes32):
        b: IVerifierPayments.Batch = staticcall self.payments.batches(batch_id)
        assert b.root != empty(bytes32), "verification: unknown batch"
        seed = self._fresh_batch_seed(batch_id, (b.terms >> 160) & ((1 << 48) - 1))
    return self._sampled(seed, request_id)


@view
@external
def committee(task_id: uint256) -> DynArray[address, MAX_MEMBERS]:
    """@notice Every member (operator key) of every round so far, in draw order."""
    return self.members[task_id]


@view
@external
def named_leaves(task_id: uint256) -> DynArray[uint256, MAX_LEAVES]:
    """@notice This round's named leaves (position << 16 | chunk)."""
    return self.named[task_id]


@view
@external
def task_lifetime() -> uint256:
    """@notice Most blocks from settlement until a task of the batch must have closed."""
    p: Params = self.params
    return p.randomness_delay + p.open_task_blocks + self._lifetime(p)


@view
@external
def min_window() -> uint256:
    """@notice The shortest Payments window that leaves time to open tasks and claim unopened."""
    return self._min_window(self.params)


@view
@external
def min_unbonding() -> uint256:
    """@notice The shortest unbonding period the registry may use: window + task lifetime."""
    p: Params = self.params
    return staticcall self.payments.verification_window() + p.randomness_delay + p.open_task_blocks + self._lifetime(p)


@view
@external
def attestation_digest(request_id: bytes32, stage: uint256, sc: StageCommit) -> bytes32:
    """@notice What a stage operator signs for its commitment (contracts.verification)."""
    return self._digest(request_id, stage, sc)


# ------------------------------------------------------------------ INTERNAL

@view
@internal
def _task(task_id: uint256) -> Task:
    t: Task = self.tasks[task_id]
    assert t.status != ABSENT, "verification: unknown task"
    return t


@view
@internal
def _record_batch(
    batch_id: uint256, record: RecordLeaf, proof: DynArray[bytes32, batch_tree.MAX_PROOF],
    pipelines: DynArray[Pipeline, MAX_PIPELINES],
) -> IVerifierPayments.Batch:
    b: IVerifierPayments.Batch = staticcall self.payments.batches(batch_id)
    assert b.root != empty(bytes32), "verification: unknown batch"
    assert b.pipelines_hash != empty(bytes32), "verification: batch already released"
    assert self.task_of[record.request_id] == 0, "verification: task already open"
    leaf: bytes32 = batch_tree._leaf(
        record.request_id, record.key, record.pipeline_index, record.tokens_in, record.tokens_out,
        record.charge, record.commitment_root,
    )
    assert batch_tree._verify(proof, b.root, leaf), "verification: record not in batch"
    assert keccak256(abi_encode(pipelines)) == b.pipelines_hash, (
        "verification: pipelines do not match batch"
    )
    assert record.pipeline_index < len(pipelines), "verification: bad pipeline index"
    return b


@internal
def _new_task(batch_id: uint256, request_id: bytes32) -> uint256:
    task_id: uint256 = self.task_count + 1
    self.task_count = task_id
    self.task_of[request_id] = task_id
    return task_id


@internal
def _void(task_id: uint256, batch_id: uint256, record: RecordLeaf, gateway: address, reason: String[64]):
    # The gateway put on chain a record nobody can check: the client gets its coin back and the
    # gateway's bond pays (part of it to whoever showed it).
    taken: uint256 = extcall self.payments.slash_gateway(gateway, self.params.gateway_slash, msg.sender)
    log TaskVoided(
        task_id=task_id, batch_id=batch_id, request_id=record.request_id, gateway=gateway,
        reason=reason, gateway_slashed=taken, refunded=record.charge,
    )
    extcall self.payments.refund(
        batch_id, record.request_id, record.key, record.pipeline_index, record.charge
    )


@view
@internal
def _shape_fault(
    record: RecordLeaf, stage: uint256, n_stages: uint256, sc: StageCommit, model_id: uint256
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
def _current_member(task_id: uint256, t: Task) -> Member:
    m: Member = self.member[task_id][msg.sender]
    assert m.owner != empty(address) and m.round == t.outcome_round, (
        "verification: caller is not on the committee"
    )
    return m


@view
@internal
def _round_size(task_id: uint256, t: Task) -> uint256:
    return len(self.members[task_id]) - t.round_first


@pure
@internal
def _round_len(p: Params) -> uint256:
    return 2 * p.randomness_delay + p.commit_blocks + p.reveal_blocks + p.open_blocks + 4


@pure
@internal
def _lifetime(p: Params) -> uint256:
    return p.max_rounds * self._round_len(p)


@pure
@internal
def _min_window(p: Params) -> uint256:
    return p.randomness_delay + 2 * p.open_task_blocks + 1


@view
@internal
def _fresh_batch_seed(batch_id: uint256, settle_block: uint256) -> bytes32:
    return keccak256(
        abi_encode(
            staticcall self.randomness.value(settle_block + self.params.randomness_delay), batch_id
        )
    )


@internal
def _batch_seed(batch_id: uint256, settle_block: uint256) -> bytes32:
    seed: bytes32 = self.batch_seed[batch_id]
    if seed == empty(bytes32):
        seed = self._fresh_batch_seed(batch_id, settle_block)
        self.batch_seed[batch_id] = seed
    return seed


@view
@internal
def _sampled(seed: bytes32, request_id: bytes32) -> bool:
    return convert(keccak256(abi_encode(seed, request_id, convert(0, uint256))), uint256) % BPS < self.params.sample_bps


@pure
@internal
def _check_leaf(sc: StageCommit, position: uint32, chunk: uint16):
    if chunk == TOKEN:
        assert position < sc.n_tokens, "verification: token leaf outside the commitment"
    else:
        assert position < sc.positions and convert(chunk, uint256) * 32 < convert(
            sc.hidden_size, uint256
        ), "verification: leaf outside the commitment"


@view
@internal
def _leaves(task_id: uint256, t: Task) -> (DynArray[uint32, MAX_LEAVES], DynArray[uint16, MAX_LEAVES]):
    positions: DynArray[uint32, MAX_LEAVES] = []
    cks: DynArray[uint16, MAX_LEAVES] = []
    seed: bytes32 = staticcall self.randomness.value(t.spot_block)
    # hidden sizes are bound to the model registry at open_task: n_chunks fits easily
    n_chunks: uint256 = (convert(t.commit.hidden_size, uint256) + 31) // 32
    for k: uint256 in range(self.params.spot_chunks, bound=MAX_SPOTS):
        w: uint256 = convert(keccak256(abi_encode(seed, task_id, t.outcome_round, k)), uint256)
        positions.append(convert(w % convert(t.commit.positions, uint256), uint32))
        cks.append(convert((w >> 128) % n_chunks, uint16))
    for leaf: uint256 in self.named[task_id]:
        positions.append(convert(leaf >> 16, uint32))
        cks.append(convert(leaf & 65535, uint16))
    return positions, cks


@view
@internal
def _named_index(task_id: uint256, leaf: uint256, n_spots: uint256) -> uint256:
    for k: uint256 in range(len(self.named[task_id]), bound=MAX_LEAVES):
        if self.named[task_id][k] == leaf:
            return n_spots + k
    return MAX_LEAVES  # not named (V_PASS / V_SUSPECT): no bit


@pure
@internal
def _check_padding(hidden_size: uint32, chunk: uint16, hi: bytes32, lo: bytes32):
    # Values past d in a last partial chunk must be 0x0000 (ENCODING.md): the chunk rule would
    # otherwise count made-up padding as evidence.
    used: uint256 = convert(hidden_size, uint256) - convert(chunk, uint256) * 32
    if used >= 32:
        return
    if used > 16:
        assert convert(lo, uint256) & ((1 << ((32 - used) * 16)) - 1) == 0, (
            "verification: non-zero chunk padding"
        )
    else:
        assert lo == empty(bytes32), "verification: non-zero chunk padding"
        assert convert(hi, uint256) & ((1 << ((16 - used) * 16)) - 1) == 0, (
            "verification: non-zero chunk padding"
        )


@view
@internal
def _agree(task_id: uint256, a: address, b: address, k: uint256, p: Params) -> bool:
    ca: bytes32[2] = self.chunks[task_id][a][k]
    cb: bytes32[2] = self.chunks[task_id][b][k]
    if k >= p.spot_chunks and self.named[task_id][k - p.spot_chunks] & 65535 == convert(TOKEN, uint256):
        return ca[0] == cb[0]  # token ids: exact
    return staticcall self.spot_check.bad_count(ca[0], ca[1], cb[0], cb[1], p.max_ulp) <= p.max_bad


@internal
def _start_round(task_id: uint256, r: uint256, seed: bytes32) -> uint256:
    """@dev Seat up to committee_size << r members by snapshot stake, none seen before."""
    t: Task = self.tasks[task_id]
    p: Params = self.params
    # Bounded per round and over the task, so a late round can never overflow `members`.
    want: uint256 = min(
        min(p.committee_size << r, MAX_COMMITTEE), MAX_MEMBERS - len(self.members[task_id])
    )
    exclude: DynArray[address, MAX_EXCLUDED] = [t.stage_owner]
    if t.input_owner != empty(address):
        exclude.append(t.input_owner)
    for op: address in self.members[task_id]:
        exclude.append(self.member[task_id][op].owner)
    ops: DynArray[address, MAX_COMMITTEE] = []
    owners: DynArray[address, MAX_COMMITTEE] = []
    stakes: DynArray[uint256, MAX_COMMITTEE] = []
    ops, owners, stakes = staticcall self.committee_draw.draw(
        self.registry.address, seed, t.snapshot_block, want, p.seat_stake, exclude
    )
    if len(ops) == 0:
        return 0
    first: uint256 = len(self.members[task_id])
    for j: uint256 in range(len(ops), bound=MAX_COMMITTEE):
        self.member[task_id][ops[j]] = Member(
            owner=owners[j], round=r, commitment=empty(bytes32), kind=0,
            output_root=empty(bytes32), leaf=0, opened=False, slashed=False,
        )
        self.members[task_id].append(ops[j])
        extcall self.registry.lock(owners[j])
    commit_deadline: uint256 = block.number + p.commit_blocks
    reveal_deadline: uint256 = commit_deadline + p.reveal_blocks
    self.tasks[task_id].status = VOTING
    self.tasks[task_id].outcome_round = r
    self.tasks[task_id].round_first = first
    self.tasks[task_id].committed = 0
    self.tasks[task_id].revealed = 0
    self.tasks[task_id].commit_deadline = commit_deadline
    self.tasks[task_id].reveal_deadline = reveal_deadline
    log CommitteeSelected(
        task_id=task_id, round=r, members=ops, stakes=stakes, seed=seed,
        commit_deadline=commit_deadline, reveal_deadline=reveal_deadline,
    )
    return len(ops)


@internal
def _slash(owner: address, amount: uint256, prover: address, reason: String[128]) -> uint256:
    # NodeRegistry.slash reverts when the node holds nothing: skip instead, so one broke node
    # cannot block a task from closing.
    if amount == 0 or staticcall self.registry.stake_of(owner) == 0:
        return 0
    return extcall self.registry.slash(owner, amount, prover, reason)


@internal
def _slash_member(task_id: uint256, op: address, reason: String[128]):
    owner: address = self.member[task_id][op].owner
    self.member[task_id][op].slashed = True
    taken: uint256 = self._slash(owner, self.params.verifier_slash, msg.sender, reason)
    log MemberSlashed(task_id=task_id, member=op, owner=owner, amount=taken, reason=reason)


@internal
def _close(
    task_id: uint256, t: Task, status: uint8, passes: uint256, fails: uint256, bad: uint256,
    n_spots: uint256,
):
    self.tasks[task_id].status = status
    self.open_tasks[t.batch_id] -= 1
    log TaskFinalized(
        task_id=task_id, batch_id=t.batch_id, request_id=t.record.request_id, status=status,
        round=t.outcome_round, passes=passes, fails=fails,
    )
    everyone: DynArray[address, MAX_MEMBERS] = self.members[task_id]
    # Earlier rounds' members whose verdict the decided outcome shows wrong.
    if status == FRAUD or status == PASSED:
        for op: address in everyone:
            m: Member = self.member[task_id][op]
            if m.round < t.outcome_round and not m.slashed and (
                (m.kind == V_PASS and status == FRAUD) or (m.kind == V_FAIL and status == PASSED)
            ):
                self._slash_member(task_id, op, "verification: verdict against the outcome")
    if status == FRAUD:
        self._convict(task_id, t, bad, n_spots)
    elif status == SUSPECTED:
        p: Params = self.params
        count: uint256 = self.suspects[t.stage_owner] + 1
        jailed: bool = count >= p.suspect_threshold
        if jailed:
            count = 0
            extcall self.registry.jail(
                t.stage_owner, block.number + p.jail_blocks, "verification: suspect threshold"
            )
        self.suspects[t.stage_owner] = count
        log StageSuspected(task_id=task_id, owner=t.stage_owner, count=count, jailed=jailed)
    if status == PASSED or status == FRAUD or status == SUSPECTED:
        self._reward(task_id, t, everyone, status)
    extcall self.registry.unlock(t.stage_owner)
    for op: address in everyone:
        extcall self.registry.unlock(self.member[task_id][op].owner)


@internal
def _convict(task_id: uint256, t: Task, bad: uint256, n_spots: uint256):
    # Split the stage's slash among accusers of this round whose named leaf was shown bad (or,
    # when the stage could not open, every standing accuser); jail it; refund the client.
    p: Params = self.params
    provers: DynArray[address, MAX_MEMBERS] = []
    for op: address in self.members[task_id]:
        m: Member = self.member[task_id][op]
        if m.kind == V_FAIL and not m.slashed and m.round == t.outcome_round:
            provers.append(m.owner)
    if len(provers) == 0:
        provers.append(msg.sender)
    part: uint256 = p.stage_slash // len(provers)
    for i: uint256 in range(len(provers), bound=MAX_MEMBERS):
        amount: uint256 = part
        if i == len(provers) - 1:
            amount = p.stage_slash - part * i  # the last prover takes the rounding dust
        taken: uint256 = self._slash(
            t.stage_owner, amount, provers[i], "verification: stage output failed the check"
        )
        log StageSlashed(
            task_id=task_id, stage_operator=t.stage_operator, owner=t.stage_owner, amount=taken,
            prover=provers[i], reason="verification: stage output failed the check",
        )
    extcall self.registry.jail(t.stage_owner, block.number + p.jail_blocks, "verification: fraud")
    rec: RecordLeaf = t.record
    log ClientRefunded(
        task_id=task_id, batch_id=t.batch_id, request_id=rec.request_id, charge=rec.charge
    )
    extcall self.payments.refund(t.batch_id, rec.request_id, rec.key, rec.pipeline_index, rec.charge)


@internal
def _reward(task_id: uint256, t: Task, everyone: DynArray[address, MAX_MEMBERS], status: uint8):
    """
    @dev Peer prediction, paid from the record's own verification share: the batch put
         charge x verifier_bps in the pool for every record and 1 in 1/sample_bps is checked,
         so a task may spend charge x verifier_bps / sample_bps, split among the scored members
         and scaled by each one's agreement with its peers (capped by `verifier_reward`).
    """
    scored: DynArray[address, MAX_MEMBERS] = []
    for op: address in everyone:
        m: Member = self.member[task_id][op]
        if m.kind != 0 and m.kind != V_NO_INPUT and not m.slashed:
            scored.append(op)
    n: uint256 = len(scored)
    if n == 0:
        return
    ver_bps: uint256 = (staticcall self.payments.batches(t.batch_id)).terms >> 224 & 65535
    p: Params = self.params
    budget: uint256 = t.record.charge * ver_bps // p.sample_bps
    full: uint256 = min(budget // n, p.verifier_reward)
    want: uint8 = V_FAIL
    if status == PASSED:
        want = V_PASS
    elif status == SUSPECTED:
        want = V_SUSPECT
    for op: address in scored:
        m: Member = self.member[task_id][op]
        agreeing: uint256 = 0
        for peer: address in scored:
            if peer != op and self.member[task_id][peer].kind == m.kind:
                agreeing += 1
        amount: uint256 = 0
        if n > 1:
            amount = full * agreeing // (n - 1)
        elif m.kind == want:
            amount = full  # alone: scored against the outcome instead
        amount = min(amount, staticcall self.payments.verifier_pool())
        if amount == 0:
            continue
        log VerifierRewarded(
            task_id=task_id, member=op, owner=m.owner, amount=amount, agreeing=agreeing,
            peers=n - 1,
        )
        extcall self.payments.pay_verifier(m.owner, amount)
