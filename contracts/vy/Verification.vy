# pragma version ~=0.4.3
"""
@title Veriplex verification game
@notice Checks settled requests after the fact. Randomness fixed only after a batch is final
        samples requests with probability `sample_bps`; anyone opens a task for a sampled one
        (proving the record is in its batch and giving the pipeline and per-stage commitments
        the record's `commitment_root` binds). One stage is chosen, and a committee of verifiers
        weighted by stake among active nodes outside the pipeline. Members commit
        keccak(task, member, verdict, own output root, salt), then reveal. Randomness after the
        reveals picks chunks; the stage's and each verifier's openings are proven against their
        roots and compared by the integer bf16 chunk rule. Verdicts contradicting their own
        evidence, missing reveals and missing openings are slashed; a stage whose output the
        verifiers' agreeing evidence contradicts is slashed and the client refunded; a split
        committee escalates to a larger one. Verifiers are paid from the verifier pool by
        agreement with their peers' verdicts.
@dev Task status: ABSENT -> VOTING -(close_votes)-> OPENING -(finalize)-> PASSED | FRAUD |
     UNRESOLVED, or back to VOTING one round up (escalation); FRAUD -(refund_client)-> REFUNDED.
     A task counts in `open_tasks[batch]` until PASSED, UNRESOLVED or REFUNDED; Payments will
     not release a batch with open tasks.
     The record's commitment_root is keccak256(abi_encode(stage commitments)), one
     StageCommit(root, positions, hidden_size, n_tokens) per pipeline stage, in order.
"""

from snekmate.auth import ownable
from snekmate.auth import ownable_2step

from modules import batch_tree
from interfaces import IRandomness
from interfaces import ISpotCheck
from interfaces import IVerifierRegistry
from interfaces import IVerifierPayments

initializes: ownable
initializes: ownable_2step[ownable := ownable]

exports: (
    ownable.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
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
    hi: bytes32  # values 0..15 of the chunk, bf16 big-endian
    lo: bytes32  # values 16..31
    siblings: DynArray[bytes32, MAX_DEPTH]

struct Params:
    sample_bps: uint256  # probability a settled request is checked
    committee_size: uint256  # first round; doubles per escalation
    max_rounds: uint256
    commit_blocks: uint256
    reveal_blocks: uint256
    open_blocks: uint256
    randomness_delay: uint256  # blocks between the event and the block whose randomness is used
    spot_chunks: uint256  # chunks opened per party
    max_ulp: uint256  # chunk rule D
    max_bad: uint256  # chunk rule K
    stage_slash: uint256  # wei
    verifier_slash: uint256  # wei
    verifier_reward: uint256  # wei per member at full agreement

struct Task:
    status: uint8
    outcome_round: uint256  # current round (0-based)
    batch_id: uint256
    record: RecordLeaf
    stage: uint256
    stage_operator: address
    stage_owner: address
    commit: StageCommit
    seed: bytes32  # the batch's sampling randomness
    commit_deadline: uint256
    reveal_deadline: uint256
    spot_block: uint256
    open_deadline: uint256
    round_first: uint256  # index in `members[task]` where the current round starts
    committed: uint256  # this round
    revealed: uint256  # this round

struct Member:
    owner: address
    round: uint256
    commitment: bytes32
    revealed: bool
    verdict: bool  # True: the stage's output is right
    output_root: bytes32
    opened: bool
    agrees: bool  # its opened chunks pass the rule against the stage's
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
    seed: bytes32
    opener: address

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
    verdict: bool
    output_root: bytes32
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
    positions: DynArray[uint32, MAX_SPOTS]
    chunks: DynArray[uint16, MAX_SPOTS]
    his: DynArray[bytes32, MAX_SPOTS]
    los: DynArray[bytes32, MAX_SPOTS]

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

event TaskEscalated:
    task_id: indexed(uint256)
    round: uint256
    passes: uint256
    fails: uint256

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
MAX_NODES: constant(uint256) = 64  # registry nodes scanned when drawing a committee
MAX_COMMITTEE: constant(uint256) = 16
MAX_MEMBERS: constant(uint256) = 32  # over all rounds of one task
MAX_SPOTS: constant(uint256) = 4
MAX_ROUNDS: constant(uint256) = 3
MAX_DEPTH: constant(uint256) = 40  # proof siblings (SpotCheck)

ABSENT: constant(uint8) = 0
VOTING: constant(uint8) = 1
OPENING: constant(uint8) = 2
PASSED: constant(uint8) = 3
FRAUD: constant(uint8) = 4
REFUNDED: constant(uint8) = 5
UNRESOLVED: constant(uint8) = 6

registry: public(IVerifierRegistry)
payments: public(IVerifierPayments)
randomness: public(IRandomness)
spot_check: public(ISpotCheck)
params: public(Params)

task_count: public(uint256)
tasks: public(HashMap[uint256, Task])  # ids start at 1
task_of: public(HashMap[bytes32, uint256])  # request id -> task id
open_tasks: public(HashMap[uint256, uint256])  # batch id -> tasks not yet closed
batch_seed: public(HashMap[uint256, bytes32])  # fixed on first use
spot_seed: public(HashMap[uint256, HashMap[uint256, bytes32]])  # task -> round -> seed
members: HashMap[uint256, DynArray[address, MAX_MEMBERS]]  # operators, all rounds
member: public(HashMap[uint256, HashMap[address, Member]])  # task -> operator -> state
picked: HashMap[uint256, HashMap[address, bool]]  # task -> owner ever on its committee
stage_opened: public(HashMap[uint256, HashMap[uint256, bool]])  # task -> round -> opened
# task -> party (stage operator or member) -> spot -> (hi, lo); a round overwrites the last
chunks: HashMap[uint256, HashMap[address, HashMap[uint256, bytes32[2]]]]


# ------------------------------------------------------------------ CONSTRUCTOR

@deploy
def __init__(
    registry_: IVerifierRegistry, payments_: IVerifierPayments, randomness_: IRandomness,
    spot_check_: ISpotCheck, params_: Params,
):
    ownable.__init__()
    ownable_2step.__init__()
    self.registry = registry_
    self.payments = payments_
    self.spot_check = spot_check_
    self._set_randomness(randomness_)
    self._set_params(params_)


# ------------------------------------------------------------------ ADMIN

@external
def set_params(params_: Params):
    ownable._check_owner()
    self._set_params(params_)


@external
def set_randomness(source: IRandomness):
    ownable._check_owner()
    self._set_randomness(source)


@internal
def _set_params(p: Params):
    assert p.sample_bps <= BPS, "verification: sample rate above 100%"
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
    self.params = p
    log ParamsSet(params=p)


@internal
def _set_randomness(source: IRandomness):
    assert source.address != empty(address), "verification: randomness is the zero address"
    self.randomness = source
    log RandomnessSet(source=source.address)


# ------------------------------------------------------------------ OPEN (anyone)

@external
def open_task(
    batch_id: uint256,
    record: RecordLeaf,
    proof: DynArray[bytes32, batch_tree.MAX_PROOF],
    pipelines: DynArray[Pipeline, MAX_PIPELINES],
    stage_commits: DynArray[StageCommit, MAX_STAGES],
) -> uint256:
    """
    @notice Start checking a sampled request of an unreleased batch. `proof` proves the record
            in the batch; `pipelines` is the batch's pipeline table; `stage_commits` are the
            stages' commitments, which must hash to the record's commitment root.
    """
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
    stages: DynArray[Stage, MAX_STAGES] = pipelines[record.pipeline_index].stages
    assert len(stage_commits) == len(stages), "verification: one commitment per stage"
    assert keccak256(abi_encode(stage_commits)) == record.commitment_root, (
        "verification: stage commitments do not match record"
    )

    seed: bytes32 = self._batch_seed(batch_id, b.release_block)
    assert self._sampled(seed, record.request_id), "verification: request not sampled"
    stage: uint256 = convert(keccak256(abi_encode(seed, record.request_id, convert(1, uint256))), uint256) % len(
        stages
    )
    sc: StageCommit = stage_commits[stage]
    assert sc.positions > 0 and sc.hidden_size > 0, "verification: empty stage commitment"

    task_id: uint256 = self.task_count + 1
    self.task_count = task_id
    self.task_of[record.request_id] = task_id
    self.open_tasks[batch_id] += 1
    op: address = stages[stage].operator
    self.tasks[task_id] = Task(
        status=VOTING, outcome_round=0, batch_id=batch_id, record=record, stage=stage,
        stage_operator=op, stage_owner=staticcall self.registry.owner_of_operator(op),
        commit=sc, seed=seed, commit_deadline=0, reveal_deadline=0, spot_block=0,
        open_deadline=0, round_first=0, committed=0, revealed=0,
    )
    log TaskOpened(
        task_id=task_id, batch_id=batch_id, request_id=record.request_id, stage=stage,
        stage_operator=op, layer_start=stages[stage].layer_start,
        layer_end=stages[stage].layer_end, stage_commit=sc, seed=seed, opener=msg.sender,
    )
    # Pipeline owners may not judge their own request.
    for s: Stage in stages:
        self.picked[task_id][staticcall self.registry.owner_of_operator(s.operator)] = True
    n: uint256 = self._start_round(task_id, 0, keccak256(abi_encode(seed, record.request_id, convert(2, uint256))))
    assert n > 0, "verification: no eligible verifier"
    return task_id


# ------------------------------------------------------------------ VOTE (committee)

@external
def commit_verdict(task_id: uint256, commitment: bytes32):
    """@notice commitment = keccak256(abi_encode(task_id, member, verdict, output_root, salt))."""
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
def reveal_verdict(task_id: uint256, verdict: bool, output_root: bytes32, salt: bytes32):
    """@notice Open the commitment: once every member committed or the commit deadline passed."""
    t: Task = self._task(task_id)
    assert t.status == VOTING, "verification: not voting"
    assert block.number > t.commit_deadline or t.committed == self._round_size(task_id, t), (
        "verification: commits still open"
    )
    assert block.number <= t.reveal_deadline, "verification: reveal deadline passed"
    m: Member = self._current_member(task_id, t)
    assert m.commitment != empty(bytes32), "verification: nothing committed"
    assert not m.revealed, "verification: already revealed"
    assert keccak256(abi_encode(task_id, msg.sender, verdict, output_root, salt)) == m.commitment, (
        "verification: reveal does not match commitment"
    )
    self.member[task_id][msg.sender].revealed = True
    self.member[task_id][msg.sender].verdict = verdict
    self.member[task_id][msg.sender].output_root = output_root
    self.tasks[task_id].revealed = t.revealed + 1
    log VerdictRevealed(
        task_id=task_id, member=msg.sender, verdict=verdict, output_root=output_root, salt=salt
    )


@external
def close_votes(task_id: uint256):
    """
    @notice End the vote (anyone): after the reveal deadline, or once every member revealed.
            Members who did not reveal are slashed; the spot-check randomness is the block
            `randomness_delay` blocks ahead.
    """
    t: Task = self._task(task_id)
    assert t.status == VOTING, "verification: not voting"
    size: uint256 = self._round_size(task_id, t)
    assert block.number > t.reveal_deadline or t.revealed == size, "verification: reveals still open"
    for i: uint256 in range(t.round_first, t.round_first + size, bound=MAX_MEMBERS):
        op: address = self.members[task_id][i]
        if not self.member[task_id][op].revealed:
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


# ------------------------------------------------------------------ SPOT CHECK (anyone)

@view
@external
def spot_checks(task_id: uint256) -> (DynArray[uint32, MAX_SPOTS], DynArray[uint16, MAX_SPOTS]):
    """@notice (positions, chunks) to open in the current round (reverts until drawable)."""
    t: Task = self._task(task_id)
    assert t.status == OPENING, "verification: not opening"
    seed: bytes32 = self.spot_seed[task_id][t.outcome_round]
    if seed == empty(bytes32):
        seed = staticcall self.randomness.value(t.spot_block)
    return self._spots(task_id, t, seed)


@external
def open_chunks(task_id: uint256, party: address, openings: DynArray[Opening, MAX_SPOTS]):
    """
    @notice Open the drawn chunks of `party`'s committed output: the stage operator's (anyone
            holding its rows may) or a revealed member's (against its revealed output root).
    """
    t: Task = self._task(task_id)
    assert t.status == OPENING, "verification: not opening"
    assert block.number <= t.open_deadline, "verification: open deadline passed"
    r: uint256 = t.outcome_round
    root: bytes32 = empty(bytes32)
    if party == t.stage_operator:
        assert not self.stage_opened[task_id][r], "verification: already opened"
        root = t.commit.root
        self.stage_opened[task_id][r] = True
    else:
        m: Member = self.member[task_id][party]
        assert m.owner != empty(address) and m.round == r and m.revealed, (
            "verification: party has no revealed verdict"
        )
        assert not m.opened, "verification: already opened"
        root = m.output_root
        self.member[task_id][party].opened = True
    seed: bytes32 = self.spot_seed[task_id][r]
    if seed == empty(bytes32):
        seed = staticcall self.randomness.value(t.spot_block)
        self.spot_seed[task_id][r] = seed
    positions: DynArray[uint32, MAX_SPOTS] = []
    cks: DynArray[uint16, MAX_SPOTS] = []
    positions, cks = self._spots(task_id, t, seed)
    assert len(openings) == len(positions), "verification: wrong number of openings"
    his: DynArray[bytes32, MAX_SPOTS] = []
    los: DynArray[bytes32, MAX_SPOTS] = []
    for k: uint256 in range(len(openings), bound=MAX_SPOTS):
        o: Opening = openings[k]
        got: bytes32 = staticcall self.spot_check.chunk_root(
            convert(chain.id, uint64), t.record.request_id, convert(t.stage, uint16),
            t.commit.positions, t.commit.hidden_size, t.commit.n_tokens, positions[k], cks[k],
            o.hi, o.lo, o.siblings,
        )
        assert got == root, "verification: opening does not match root"
        self._check_padding(t.commit.hidden_size, cks[k], o.hi, o.lo)
        self.chunks[task_id][party][k] = [o.hi, o.lo]
        his.append(o.hi)
        los.append(o.lo)
    log ChunksOpened(
        task_id=task_id, party=party, round=r, positions=positions, chunks=cks, his=his, los=los
    )


@external
def finalize(task_id: uint256):
    """
    @notice Judge the round (anyone): after the open deadline, or once the stage and every
            revealed member opened. Slashes members without openings or whose verdict
            contradicts their evidence; then passes, convicts, or escalates a split.
    """
    t: Task = self._task(task_id)
    assert t.status == OPENING, "verification: not opening"
    r: uint256 = t.outcome_round
    size: uint256 = self._round_size(task_id, t)
    stage_open: bool = self.stage_opened[task_id][r]
    all_open: bool = stage_open
    for i: uint256 in range(t.round_first, t.round_first + size, bound=MAX_MEMBERS):
        m: Member = self.member[task_id][self.members[task_id][i]]
        if m.revealed and not m.opened:
            all_open = False
    assert block.number > t.open_deadline or all_open, "verification: openings still open"

    p: Params = self.params
    n_spots: uint256 = p.spot_chunks
    passes: uint256 = 0
    fails: uint256 = 0
    fail_ops: DynArray[address, MAX_COMMITTEE] = []
    for i: uint256 in range(t.round_first, t.round_first + size, bound=MAX_MEMBERS):
        op: address = self.members[task_id][i]
        m: Member = self.member[task_id][op]
        if not m.revealed or m.slashed:
            continue
        if not m.opened:
            self._slash_member(task_id, op, "verification: evidence not opened")
            continue
        if stage_open:
            agrees: bool = self._agree(task_id, t.stage_operator, op, n_spots, p)
            self.member[task_id][op].agrees = agrees
            if agrees != m.verdict:
                self._slash_member(task_id, op, "verification: verdict contradicts evidence")
                continue
        if m.verdict:
            passes += 1
        else:
            fails += 1
            fail_ops.append(op)

    # Accusers agree when each one's chunks pass the rule against the first accuser's: linear,
    # not pairwise, so a 16-member round stays far below the block gas limit.
    fails_agree: bool = True
    for a: uint256 in range(len(fail_ops), bound=MAX_COMMITTEE):
        if a > 0 and not self._agree(task_id, fail_ops[0], fail_ops[a], n_spots, p):
            fails_agree = False
            break

    status: uint8 = ABSENT
    if not stage_open and passes + fails > 0:
        status = FRAUD  # the stage could not (and nobody could for it) open its own commitment
    elif stage_open and fails > 0 and passes == 0 and fails_agree:
        status = FRAUD
    elif stage_open and passes > 0 and fails == 0:
        status = PASSED
    elif r + 1 < p.max_rounds:
        seed: bytes32 = self.spot_seed[task_id][r]
        if seed == empty(bytes32):
            seed = staticcall self.randomness.value(t.spot_block)
        if self._start_round(task_id, r + 1, keccak256(abi_encode(seed, task_id, r + 1))) > 0:
            log TaskEscalated(task_id=task_id, round=r + 1, passes=passes, fails=fails)
            return
    if status == ABSENT:
        # Last round (or nobody left to ask): the larger agreeing side decides.
        if stage_open and fails > passes and fails_agree:
            status = FRAUD
        elif stage_open and passes > fails:
            status = PASSED
        else:
            status = UNRESOLVED
    self._close(task_id, t, status, passes, fails)


@external
def refund_client(task_id: uint256, proof: DynArray[bytes32, batch_tree.MAX_PROOF]):
    """@notice Return a convicted request's charge to its client (anyone; proof as for open_task)."""
    t: Task = self._task(task_id)
    assert t.status == FRAUD, "verification: no fraud to refund"
    self.tasks[task_id].status = REFUNDED
    self.open_tasks[t.batch_id] -= 1
    log ClientRefunded(
        task_id=task_id, batch_id=t.batch_id, request_id=t.record.request_id,
        charge=t.record.charge,
    )
    rec: RecordLeaf = t.record
    extcall self.payments.refund(
        t.batch_id, rec.request_id, rec.key, rec.pipeline_index, rec.tokens_in, rec.tokens_out,
        rec.charge, rec.commitment_root, proof,
    )


# ------------------------------------------------------------------ VIEWS

@view
@external
def is_sampled(batch_id: uint256, request_id: bytes32) -> bool:
    """@notice Whether the batch's randomness selects `request_id` (reverts until it exists)."""
    seed: bytes32 = self.batch_seed[batch_id]
    if seed == empty(bytes32):
        b: IVerifierPayments.Batch = staticcall self.payments.batches(batch_id)
        assert b.root != empty(bytes32), "verification: unknown batch"
        seed = self._fresh_batch_seed(batch_id, b.release_block)
    return self._sampled(seed, request_id)


@view
@external
def committee(task_id: uint256) -> DynArray[address, MAX_MEMBERS]:
    """@notice Every member (operator key) of every round so far, in draw order."""
    return self.members[task_id]


# ------------------------------------------------------------------ INTERNAL

@view
@internal
def _task(task_id: uint256) -> Task:
    t: Task = self.tasks[task_id]
    assert t.status != ABSENT, "verification: unknown task"
    return t


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


@view
@internal
def _anchor(release_block: uint256) -> uint256:
    # The settle block is release_block - window: randomness comes strictly after it.
    return release_block - staticcall self.payments.verification_window() + self.params.randomness_delay


@view
@internal
def _fresh_batch_seed(batch_id: uint256, release_block: uint256) -> bytes32:
    return keccak256(
        abi_encode(staticcall self.randomness.value(self._anchor(release_block)), batch_id)
    )


@internal
def _batch_seed(batch_id: uint256, release_block: uint256) -> bytes32:
    seed: bytes32 = self.batch_seed[batch_id]
    if seed == empty(bytes32):
        seed = self._fresh_batch_seed(batch_id, release_block)
        self.batch_seed[batch_id] = seed
    return seed


@view
@internal
def _sampled(seed: bytes32, request_id: bytes32) -> bool:
    return convert(keccak256(abi_encode(seed, request_id, convert(0, uint256))), uint256) % BPS < self.params.sample_bps


@view
@internal
def _spots(
    task_id: uint256, t: Task, seed: bytes32
) -> (DynArray[uint32, MAX_SPOTS], DynArray[uint16, MAX_SPOTS]):
    positions: DynArray[uint32, MAX_SPOTS] = []
    cks: DynArray[uint16, MAX_SPOTS] = []
    n_chunks: uint256 = (convert(t.commit.hidden_size, uint256) + 31) // 32
    for k: uint256 in range(self.params.spot_chunks, bound=MAX_SPOTS):
        w: uint256 = convert(keccak256(abi_encode(seed, task_id, t.outcome_round, k)), uint256)
        positions.append(convert(w % convert(t.commit.positions, uint256), uint32))
        cks.append(convert((w >> 128) % n_chunks, uint16))
    return positions, cks


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
def _agree(task_id: uint256, a: address, b: address, n: uint256, p: Params) -> bool:
    for k: uint256 in range(n, bound=MAX_SPOTS):
        ca: bytes32[2] = self.chunks[task_id][a][k]
        cb: bytes32[2] = self.chunks[task_id][b][k]
        if staticcall self.spot_check.bad_count(ca[0], ca[1], cb[0], cb[1], p.max_ulp) > p.max_bad:
            return False
    return True


@internal
def _start_round(task_id: uint256, r: uint256, seed: bytes32) -> uint256:
    """@dev Draw up to committee_size << r members by stake among active nodes not yet picked."""
    p: Params = self.params
    # Bounded per round and over the task, so a late round can never overflow `members`.
    want: uint256 = min(
        min(p.committee_size << r, MAX_COMMITTEE), MAX_MEMBERS - len(self.members[task_id])
    )
    owners: DynArray[address, MAX_NODES] = []
    ops: DynArray[address, MAX_NODES] = []
    weights: DynArray[uint256, MAX_NODES] = []
    total: uint256 = 0
    count: uint256 = min(staticcall self.registry.node_count(), MAX_NODES)
    for i: uint256 in range(count, bound=MAX_NODES):
        owner: address = staticcall self.registry.node_at(i)
        if self.picked[task_id][owner]:
            continue
        node: IVerifierRegistry.Node = staticcall self.registry.nodes(owner)
        if not staticcall self.registry.is_active(node.operator):
            continue
        owners.append(owner)
        ops.append(node.operator)
        weights.append(node.stake)
        total += node.stake
    chosen: DynArray[address, MAX_COMMITTEE] = []
    stakes: DynArray[uint256, MAX_COMMITTEE] = []
    for k: uint256 in range(want, bound=MAX_COMMITTEE):
        if total == 0:
            break
        x: uint256 = convert(keccak256(abi_encode(seed, k)), uint256) % total
        for j: uint256 in range(len(owners), bound=MAX_NODES):
            if x < weights[j]:
                chosen.append(ops[j])
                stakes.append(weights[j])
                self.picked[task_id][owners[j]] = True
                self.member[task_id][ops[j]] = Member(
                    owner=owners[j], round=r, commitment=empty(bytes32), revealed=False,
                    verdict=False, output_root=empty(bytes32), opened=False, agrees=False,
                    slashed=False,
                )
                total -= weights[j]
                weights[j] = 0  # drawn without replacement
                break
            x -= weights[j]
    if len(chosen) == 0:
        return 0
    first: uint256 = len(self.members[task_id])
    for op: address in chosen:
        self.members[task_id].append(op)
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
        task_id=task_id, round=r, members=chosen, stakes=stakes, seed=seed,
        commit_deadline=commit_deadline, reveal_deadline=reveal_deadline,
    )
    return len(chosen)


@internal
def _slash(owner: address, amount: uint256, prover: address, reason: String[128]) -> uint256:
    # NodeRegistry.slash reverts when the node holds nothing: skip instead, so one broke node
    # cannot block a task from closing.
    node: IVerifierRegistry.Node = staticcall self.registry.nodes(owner)
    if amount == 0 or node.stake + node.unbonding == 0:
        return 0
    return extcall self.registry.slash(owner, amount, prover, reason)


@internal
def _slash_member(task_id: uint256, op: address, reason: String[128]):
    owner: address = self.member[task_id][op].owner
    self.member[task_id][op].slashed = True
    taken: uint256 = self._slash(owner, self.params.verifier_slash, msg.sender, reason)
    log MemberSlashed(task_id=task_id, member=op, owner=owner, amount=taken, reason=reason)


@internal
def _close(task_id: uint256, t: Task, status: uint8, passes: uint256, fails: uint256):
    self.tasks[task_id].status = status
    if status != FRAUD:
        self.open_tasks[t.batch_id] -= 1  # FRAUD stays open until the client is refunded
    log TaskFinalized(
        task_id=task_id, batch_id=t.batch_id, request_id=t.record.request_id, status=status,
        round=t.outcome_round, passes=passes, fails=fails,
    )
    everyone: DynArray[address, MAX_MEMBERS] = self.members[task_id]
    # Members on the losing side of a decided task vouched against agreeing evidence.
    if status == FRAUD or status == PASSED:
        for op: address in everyone:
            m: Member = self.member[task_id][op]
            if m.revealed and not m.slashed and m.verdict != (status == PASSED):
                self._slash_member(task_id, op, "verification: verdict against the outcome")
    if status == FRAUD:
        self._convict(task_id, t)
    self._reward(task_id, everyone, status)


@internal
def _convict(task_id: uint256, t: Task):
    # Split the stage's slash among the members whose accusation stood, one prover each.
    provers: DynArray[address, MAX_MEMBERS] = []
    for op: address in self.members[task_id]:
        m: Member = self.member[task_id][op]
        if m.revealed and not m.slashed and not m.verdict:
            provers.append(m.owner)
    if len(provers) == 0:
        provers.append(msg.sender)
    total: uint256 = self.params.stage_slash
    part: uint256 = total // len(provers)
    for i: uint256 in range(len(provers), bound=MAX_MEMBERS):
        amount: uint256 = part
        if i == len(provers) - 1:
            amount = total - part * i  # the last prover takes the rounding dust
        prover: address = provers[i]
        taken: uint256 = self._slash(
            t.stage_owner, amount, prover, "verification: stage output failed the spot check"
        )
        log StageSlashed(
            task_id=task_id, stage_operator=t.stage_operator, owner=t.stage_owner, amount=taken,
            prover=prover,
        )


@internal
def _reward(task_id: uint256, everyone: DynArray[address, MAX_MEMBERS], status: uint8):
    """@dev Peer prediction: each scored member earns reward x (peers agreeing / peers)."""
    scored: DynArray[address, MAX_MEMBERS] = []
    for op: address in everyone:
        m: Member = self.member[task_id][op]
        if m.revealed and not m.slashed:
            scored.append(op)
    n: uint256 = len(scored)
    full: uint256 = self.params.verifier_reward
    for op: address in scored:
        m: Member = self.member[task_id][op]
        agreeing: uint256 = 0
        for peer: address in scored:
            if peer != op and self.member[task_id][peer].verdict == m.verdict:
                agreeing += 1
        amount: uint256 = 0
        if n > 1:
            amount = full * agreeing // (n - 1)
        elif m.verdict == (status == PASSED) and status != UNRESOLVED:
            amount = full  # alone: scored against the outcome instead
        amount = min(amount, staticcall self.payments.verifier_pool())
        if amount == 0:
            continue
        log VerifierRewarded(
            task_id=task_id, member=op, owner=m.owner, amount=amount, agreeing=agreeing,
            peers=n - 1 if n > 0 else 0,
        )
        extcall self.payments.pay_verifier(m.owner, amount)
