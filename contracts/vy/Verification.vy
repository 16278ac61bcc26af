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
        A bad leaf convicts the stage (FRAUD: slashed, jailed, client refunded) once a larger
        committee from a fresh block confirms it (every round but the last); accusers whose
        leaf stood share the slash; a verdict is punished only when the opened evidence shows it
        wrong; a tie escalates to a larger committee drawn from a fresh block. V_SUSPECT verdicts
        (statistical evidence) never slash: a CUSUM per operator (SUSPECTED adds SUSPECT_WEIGHT,
        PASSED takes 1 off, floored at 0) jails at SUSPECT_WEIGHT * suspect_threshold, so an
        honest operator's rare false suspicions decay instead of adding up over its lifetime.
        A member that could not get its inputs reveals V_NO_INPUT; the input stage must then open
        the spots of its own output or be slashed; a round where NO_INPUT outnumbers the standing
        verdicts decides nothing, and in the last round the input stage is slashed anyway (it
        held its rows but did not serve them). Every task has a hard deadline after which it
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

from modules import timelock
from interfaces import ICommittee
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
    suspect_threshold: uint256  # net SUSPECTED outcomes (CUSUM, see SUSPECT_WEIGHT) that jail

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
    chunk_rule: uint256  # 1 << 64 | D << 8 | K: the model's registered spot-check rule; 0: params'

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
    positions: DynArray[uint32, MAX_LEAVES]  # the leaves of spot_checks(task), in order
    chunks: DynArray[uint16, MAX_LEAVES]  # 65535: a token leaf (hi = token id)
    his: DynArray[bytes32, MAX_LEAVES]
    los: DynArray[bytes32, MAX_LEAVES]

event LeavesJudged:
    task_id: indexed(uint256)
    round: uint256
    bad: uint256  # bit k: leaf k of spot_checks (random spots, then named) shown wrong
    split: bool
    agree: uint256[MAX_LEAVES]  # per leaf: members whose opening passes the rule against the stage's
    disagree: uint256[MAX_LEAVES]

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
SUSPECT_WEIGHT: constant(uint256) = 16  # CUSUM step of a SUSPECTED outcome (a PASSED is -1)
V_NO_INPUT: constant(uint8) = 4


registry: public(IVerifierRegistry)
payments: public(IVerifierPayments)
randomness: public(IRandomness)
spot_check: public(ISpotCheck)
committee_draw: public(ICommittee)
opener: public(address)  # the TaskOpener: the only way in
params: public(Params)

task_count: public(uint256)
tasks: public(HashMap[uint256, Task])  # ids start at 1
task_of: public(HashMap[bytes32, uint256])  # request id -> task id
open_tasks: public(HashMap[uint256, uint256])  # batch id -> tasks not yet closed
suspects: public(HashMap[address, uint256])  # owner -> CUSUM score since its last jail
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
    registry_: IVerifierRegistry, payments_: IVerifierPayments,
    randomness_: IRandomness, spot_check_: ISpotCheck, committee_: ICommittee, opener_: address,
    params_: Params, timelock_delay_: uint256,
):
    ownable.__init__()
    ownable_2step.__init__()
    timelock.__init__(timelock_delay_)
    self.registry = registry_
    self.payments = payments_
    self.spot_check = spot_check_
    self.committee_draw = committee_
    self.opener = opener_
    assert randomness_.address != empty(address), "verification: zero randomness"
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


@internal
def _set_params(p: Params):
    # Bounds (contracts.verification.VerificationParams.validate quotes the offending value).
    assert (
        p.sample_bps <= BPS and p.committee_size > 0
        and p.committee_size <= MAX_COMMITTEE and p.max_rounds > 0 and p.max_rounds <= MAX_ROUNDS
        and p.commit_blocks > 0 and p.reveal_blocks > 0 and p.open_blocks > 0
        and p.randomness_delay > 0 and p.spot_chunks > 0 and p.spot_chunks <= MAX_SPOTS
        and p.max_bad < 32 and p.open_task_blocks > 0 and p.seat_stake > 0
        and p.suspect_threshold > 0
    ), "verification: params out of range"
    self.params = p
    # Cross-contract rules, on every change: tasks fit the window; nobody leaves before judgment.
    window: uint256 = staticcall self.payments.verification_window()
    assert window >= self._min_window(p), "verification: window too short to open tasks"
    assert staticcall self.registry.unbonding_period() >= window + self._lifetime(p), (
        "verification: unbonding < window + task lifetime"
    )
    log ParamsSet(params=p)


# ------------------------------------------------------------------ OPEN (anyone)

@external
def start_task(
    batch_id: uint256, record: RecordLeaf, stage: uint256, stage_operator: address,
    layer_start: uint256, layer_end: uint256, sc: StageCommit, input_operator: address,
    input_commit: StageCommit, seed: bytes32, gateway: address, settle_block: uint256,
    void_reason: String[64], opener: address, chunk_rule: uint256,
) -> uint256:
    """
    @notice Called by the TaskOpener once it checked a sampled record (in its batch, the
            stage's signature, the shape): a task with round 0's committee, or, with a
            `void_reason`, a voided record (client refunded, gateway bond slashed).
            `chunk_rule`: the model's registered rule (1 << 64 | D << 8 | K), 0 for the default.
    """
    self._only_opener()
    assert self.task_of[record.request_id] == 0, "verification: task already open"
    task_id: uint256 = self.task_count + 1
    self.task_count = task_id
    self.task_of[record.request_id] = task_id
    if void_reason != "":
        self.tasks[task_id].status = VOID
        self.tasks[task_id].batch_id = batch_id
        self.tasks[task_id].record = record
        taken: uint256 = extcall self.payments.slash_gateway(
            gateway, self.params.gateway_slash, opener
        )
        log TaskVoided(
            task_id=task_id, batch_id=batch_id, request_id=record.request_id, gateway=gateway,
            reason=void_reason, gateway_slashed=taken, refunded=record.charge,
        )
        self._refund(batch_id, record)
        return task_id
    p: Params = self.params
    self.open_tasks[batch_id] += 1
    t: Task = empty(Task)
    t.status = VOTING
    t.batch_id = batch_id
    t.record = record
    t.stage = stage
    t.stage_operator = stage_operator
    t.stage_owner = staticcall self.registry.owner_of_operator(stage_operator)
    t.commit = sc
    if input_operator != empty(address):
        t.input_operator = input_operator
        t.input_owner = staticcall self.registry.owner_of_operator(input_operator)
        t.input_commit = input_commit
    t.seed = seed
    t.chunk_rule = chunk_rule
    t.snapshot_block = settle_block
    t.deadline = block.number + self._lifetime(p)
    self.tasks[task_id] = t
    extcall self.registry.lock(t.stage_owner)
    log TaskOpened(
        task_id=task_id, batch_id=batch_id, request_id=record.request_id, stage=stage,
        stage_operator=stage_operator, layer_start=layer_start, layer_end=layer_end,
        stage_commit=sc, input_operator=input_operator, input_root=input_commit.root, seed=seed,
        deadline=t.deadline, opener=opener,
    )
    n: uint256 = self._start_round(
        task_id, 0, keccak256(abi_encode(seed, record.request_id, convert(2, uint256)))
    )
    assert n > 0, "verification: no eligible verifier"
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
    spot: uint256 = block.number + self.params.randomness_delay
    deadline: uint256 = spot + self.params.open_blocks
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
def open_chunks(task_id: uint256, party: address, openings: DynArray[ISpotCheck.Opening, MAX_LEAVES]):
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
    assert staticcall self.spot_check.check_openings(
        convert(chain.id, uint64), t.record.request_id, convert(stage, uint16),
        ISpotCheck.Shape(positions=sc.positions, hidden_size=sc.hidden_size, n_tokens=sc.n_tokens),
        root, positions, cks, openings,
    )
    his: DynArray[bytes32, MAX_LEAVES] = []
    los: DynArray[bytes32, MAX_LEAVES] = []
    for k: uint256 in range(len(openings), bound=MAX_LEAVES):
        self.chunks[task_id][party][k] = [openings[k].hi, openings[k].lo]
        his.append(openings[k].hi)
        los.append(openings[k].lo)
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
    token_mask: uint256 = 0
    for k: uint256 in range(len(self.named[task_id]), bound=MAX_LEAVES):
        if self.named[task_id][k] & 65535 == convert(TOKEN, uint256):
            token_mask |= 1 << (p.spot_chunks + k)
    # Who opened, and each opened member's agreement with the stage, leaf by leaf.
    kinds: DynArray[uint8, MAX_COMMITTEE] = []
    masks: DynArray[uint256, MAX_COMMITTEE] = []
    named_k: DynArray[uint256, MAX_COMMITTEE] = []
    ops: DynArray[address, MAX_COMMITTEE] = []
    no_input: uint256 = 0
    for i: uint256 in range(size, bound=MAX_COMMITTEE):
        op: address = self.members[task_id][t.round_first + i]
        m: Member = self.member[task_id][op]
        if m.kind == V_NO_INPUT:
            no_input += 1
        elif m.kind != 0 and not m.slashed and not m.opened:
            self._slash_member(task_id, op, "verification: evidence not opened")
        elif m.kind != 0 and not m.slashed:
            ops.append(op)
            kinds.append(m.kind)
            mask: uint256 = 0
            if stage_open:
                mask = self._agreement(task_id, t.stage_operator, op, n_leaves, token_mask, p)
            masks.append(mask)
            named_k.append(self._named_index(task_id, m.leaf, p.spot_chunks))

    bad: uint256 = 0
    tie: bool = False
    codes: DynArray[uint8, MAX_COMMITTEE] = []
    agree_n: uint256[MAX_LEAVES] = empty(uint256[MAX_LEAVES])
    disagree_n: uint256[MAX_LEAVES] = empty(uint256[MAX_LEAVES])
    if stage_open and len(ops) > 0:
        bad, tie, codes, agree_n, disagree_n = staticcall self.spot_check.judge(
            kinds, masks, named_k, n_leaves
        )
        log LeavesJudged(task_id=task_id, round=r, bad=bad, split=tie, agree=agree_n, disagree=disagree_n)
        if bad != 0 and r + 1 < p.max_rounds:
            # A conviction is confirmed by a larger committee drawn from a fresh block before it
            # slashes anyone: a coalition that holds one committee cannot frame an honest stage
            # unless it also holds the next. This round's verdicts are judged against the outcome.
            bad = 0
            tie = True
            codes = []

    # Verdicts the evidence shows wrong lose their stake; count the standing ones.
    passes: uint256 = 0
    fails: uint256 = 0
    suspects: uint256 = 0
    for i: uint256 in range(len(ops), bound=MAX_COMMITTEE):
        c: uint8 = 0
        if len(codes) > 0:
            c = codes[i]
        if c != 0:
            why: String[48] = "verification: named leaf is not faulty"
            if c == 1:
                why = "verification: pass contradicted by evidence"
            elif c == 2:
                why = "verification: own evidence agrees at named leaf"
            elif c == 3:
                why = "verification: named leaf outweighed by evidence"
            self._slash_member(task_id, ops[i], why)
        elif kinds[i] == V_PASS:
            passes += 1
        elif kinds[i] == V_FAIL:
            fails += 1
        else:
            suspects += 1
    voters: uint256 = len(ops)

    # Data availability: members said they got no input. The input stage had to open its spots,
    # and to serve its rows: when NO_INPUT outnumbers the standing verdicts in the last round (a
    # fresh, larger committee could not get them either), opening the spots does not save it.
    # Before the last round such a round judges nothing and escalates, so a coalition holding one
    # committee cannot slash an honest input stage by claiming NO_INPUT.
    starved: bool = no_input > voters
    if no_input > 0 and t.input_operator != empty(address) and (
        not self.input_opened[task_id][r] or (starved and r + 1 >= p.max_rounds)
    ):
        self._slash_input(task_id, t, msg.sender, "verification: inputs withheld")

    status: uint8 = ABSENT
    if not stage_open and voters > 0:
        status = FRAUD  # the stage could not (and nobody could for it) open its own commitment
    elif starved:
        pass  # most of the round had no inputs: the few left do not decide for it
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
def blame_input(task_id: uint256, prover: address):
    """
    @notice Stage-level blame (called by the TaskOpener, which checked the proof): the input
            stage signed a second commitment to the rows it sent this stage, other than the one
            its record settled. This stage computed on what it received, so it is not judged
            on the settled rows: the input stage is slashed (its prover share to `prover`, the
            record's client, whose answer was computed from rows the input stage disowned) and
            jailed; the task closes UNRESOLVED (no verdict, no rewards) and the record is paid
            as settled, so the stage that did its work loses nothing.
    """
    self._only_opener()
    t: Task = self._live(task_id)
    self._slash_input(task_id, t, prover, "verification: input stage equivocated")
    extcall self.registry.jail(
        t.input_owner, block.number + self.params.jail_blocks, "verification: equivocation"
    )
    self._close(task_id, t, UNRESOLVED, 0, 0, 0, 0)


@external
def expire(task_id: uint256):
    """@notice Close a task past its hard deadline (anyone): UNRESOLVED, no rewards, escrow free."""
    t: Task = self._live(task_id)
    assert block.number > t.deadline, "verification: deadline not reached"
    self._close(task_id, t, UNRESOLVED, 0, 0, 0, 0)


@view
@external
def committee(task_id: uint256) -> DynArray[address, MAX_MEMBERS]:
    """@notice Every member (operator key) of every round so far, in draw order."""
    return self.members[task_id]


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


# ------------------------------------------------------------------ INTERNAL

@view
@internal
def _task(task_id: uint256) -> Task:
    t: Task = self.tasks[task_id]
    assert t.status != ABSENT, "verification: unknown task"
    return t


@view
@internal
def _only_opener():
    assert msg.sender == self.opener, "verification: caller is not the task opener"


@view
@internal
def _live(task_id: uint256) -> Task:
    t: Task = self._task(task_id)
    assert t.status == VOTING or t.status == OPENING or t.status == DRAWING, (
        "verification: task closed"
    )
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


@pure
@internal
def _check_leaf(sc: StageCommit, position: uint32, chunk: uint16):
    if chunk == TOKEN:
        assert position < sc.n_tokens, "verification: leaf outside the commitment"
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


@view
@internal
def _agreement(task_id: uint256, a: address, b: address, n: uint256, token_mask: uint256, p: Params) -> uint256:
    ca: DynArray[bytes32[2], MAX_LEAVES] = []
    cb: DynArray[bytes32[2], MAX_LEAVES] = []
    for k: uint256 in range(n, bound=MAX_LEAVES):
        ca.append(self.chunks[task_id][a][k])
        cb.append(self.chunks[task_id][b][k])
    rule: uint256 = self.tasks[task_id].chunk_rule
    if rule == 0:
        rule = (p.max_ulp << 8) | p.max_bad
    return staticcall self.spot_check.agreement(ca, cb, token_mask, (rule >> 8) & 65535, rule & 255)


@internal
def _start_round(task_id: uint256, r: uint256, seed: bytes32) -> uint256:
    """@dev Seat up to committee_size << r members (odd from round 1 on, so a coalition
         of half a confirming committee cannot split it) by snapshot stake, none seen before."""
    stage_owner: address = self.tasks[task_id].stage_owner
    input_owner: address = self.tasks[task_id].input_owner
    # Bounded per round and over the task, so a late round can never overflow `members`.
    want: uint256 = min(
        min((self.params.committee_size << r) | min(r, 1), MAX_COMMITTEE),
        MAX_MEMBERS - len(self.members[task_id]),
    )
    exclude: DynArray[address, MAX_EXCLUDED] = [stage_owner]
    if input_owner != empty(address):
        exclude.append(input_owner)
    for op: address in self.members[task_id]:
        exclude.append(self.member[task_id][op].owner)
    ops: DynArray[address, MAX_COMMITTEE] = []
    owners: DynArray[address, MAX_COMMITTEE] = []
    stakes: DynArray[uint256, MAX_COMMITTEE] = []
    ops, owners, stakes = staticcall self.committee_draw.draw(
        self.registry.address, seed, self.tasks[task_id].snapshot_block, want, self.params.seat_stake,
        exclude,
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
    commit_deadline: uint256 = block.number + self.params.commit_blocks
    reveal_deadline: uint256 = commit_deadline + self.params.reveal_blocks
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
    if amount == 0 or staticcall self.registry.slashable(owner) == 0:
        return 0
    return extcall self.registry.slash(owner, amount, prover, reason)


@internal
def _slash_input(task_id: uint256, t: Task, prover: address, reason: String[64]):
    taken: uint256 = self._slash(t.input_owner, self.params.stage_slash, prover, reason)
    log StageSlashed(
        task_id=task_id, stage_operator=t.input_operator, owner=t.input_owner, amount=taken,
        prover=prover, reason=reason,
    )


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
        count: uint256 = self.suspects[t.stage_owner] + SUSPECT_WEIGHT
        jailed: bool = count >= SUSPECT_WEIGHT * self.params.suspect_threshold
        if jailed:
            count = 0
            extcall self.registry.jail(
                t.stage_owner, block.number + self.params.jail_blocks,
                "verification: suspect threshold",
            )
        self.suspects[t.stage_owner] = count
        log StageSuspected(task_id=task_id, owner=t.stage_owner, count=count, jailed=jailed)
    elif status == PASSED and self.suspects[t.stage_owner] > 0:
        self.suspects[t.stage_owner] -= 1  # (TaskFinalized says so: indexers replay the score)
    if status == PASSED or status == FRAUD or status == SUSPECTED:
        self._reward(task_id, t, everyone, status)
    extcall self.registry.unlock(t.stage_owner)
    for op: address in everyone:
        extcall self.registry.unlock(self.member[task_id][op].owner)


@internal
def _convict(task_id: uint256, t: Task, bad: uint256, n_spots: uint256):
    # Split the stage's slash among accusers of this round whose named leaf was shown bad (or,
    # when the stage could not open, every standing accuser); jail it; refund the client.
    stage_slash: uint256 = self.params.stage_slash
    provers: DynArray[address, MAX_MEMBERS] = []
    for op: address in self.members[task_id]:
        m: Member = self.member[task_id][op]
        if m.kind == V_FAIL and not m.slashed and m.round == t.outcome_round:
            provers.append(m.owner)
    if len(provers) == 0:
        provers.append(msg.sender)
    part: uint256 = stage_slash // len(provers)
    for i: uint256 in range(len(provers), bound=MAX_MEMBERS):
        amount: uint256 = part
        if i == len(provers) - 1:
            amount = stage_slash - part * i  # the last prover takes the rounding dust
        taken: uint256 = self._slash(
            t.stage_owner, amount, provers[i], "verification: stage output failed the check"
        )
        log StageSlashed(
            task_id=task_id, stage_operator=t.stage_operator, owner=t.stage_owner, amount=taken,
            prover=provers[i], reason="verification: stage output failed the check",
        )
    extcall self.registry.jail(
        t.stage_owner, block.number + self.params.jail_blocks, "verification: fraud"
    )
    log ClientRefunded(
        task_id=task_id, batch_id=t.batch_id, request_id=t.record.request_id, charge=t.record.charge
    )
    self._refund(t.batch_id, t.record)


@internal
def _refund(batch_id: uint256, rec: RecordLeaf):
    extcall self.payments.refund(batch_id, rec.request_id, rec.key, rec.pipeline_index, rec.charge)


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
    # (sample_bps > 0 here: a task exists only for a sampled record)
    budget: uint256 = t.record.charge * ver_bps // max(self.params.sample_bps, 1)
    full: uint256 = min(budget // n, self.params.verifier_reward)
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
