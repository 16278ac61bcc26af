"""Scheduler unit tests (titanoboa): epoch validation, assignments, roles."""

from __future__ import annotations

import boa
import pytest

from tests.support.boa import ETH, System, funded, mine

SNAP = b"\x07" * 32


@pytest.fixture
def s():
    return System(layers=8, nodes=4)


def entries(s, *ranges):
    """Entries (operator i, model, start, end) sorted by (model, start)."""
    return [(s.operators[i], s.model_id, a, b) for i, (a, b) in enumerate(ranges)]


def test_publish_epoch_records_assignments_and_snapshot(s):
    with boa.env.prank(s.admin):
        epoch = s.sched.publish_epoch(entries(s, (0, 3), (0, 8), (3, 8)), SNAP)
        logs = s.sched.get_logs()
    assert epoch == 1 and s.sched.epoch() == 1 and s.sched.snapshot_hash(1) == SNAP
    assert s.sched.current_assignment(s.operators[2]) == (True, s.model_id, 3, 8)
    assert s.sched.current_assignment(s.operators[3]) == (False, 0, 0, 0)
    names = [type(log).__name__ for log in logs]
    assert names.count("AllocationAssigned") == 3 and names[-1] == "EpochPublished"


def test_a_new_epoch_supersedes_the_previous_assignment(s):
    with boa.env.prank(s.admin):
        s.sched.publish_epoch(entries(s, (0, 8), (0, 8)), SNAP)
        s.sched.publish_epoch(entries(s, (0, 8)), b"\x08" * 32)
    assert s.sched.current_assignment(s.operators[0])[0]
    assert not s.sched.current_assignment(s.operators[1])[0]
    assert s.sched.assignment_of(s.operators[1]) == (1, s.model_id, 0, 8)


def test_suffix_overlap_counts_as_a_complete_pipeline(s):
    # [0,5) then [3,8): the second node serves the suffix [5,8) of its range
    with boa.env.prank(s.admin):
        assert s.sched.publish_epoch(entries(s, (0, 5), (3, 8)), SNAP) == 1


@pytest.mark.parametrize(
    "ranges, reason",
    [
        (((0, 3), (4, 8)), "scheduler: no complete pipeline"),
        (((0, 3), (3, 7)), "scheduler: no complete pipeline"),
        (((1, 8),), "scheduler: no complete pipeline"),
        (((0, 9),), "scheduler: range outside model"),
        (((0, 0), (0, 8)), "scheduler: empty layer range"),
        (((3, 8), (0, 3)), "scheduler: entries not sorted"),
    ],
)
def test_publish_epoch_rejects_bad_allocations(s, ranges, reason):
    with boa.env.prank(s.admin), boa.reverts(reason):
        s.sched.publish_epoch(entries(s, *ranges), SNAP)
    assert s.sched.epoch() == 0


def test_publish_epoch_rejects_a_duplicate_operator(s):
    e = entries(s, (0, 4), (4, 8))
    e[1] = (s.operators[0], s.model_id, 4, 8)
    with boa.env.prank(s.admin), boa.reverts("scheduler: duplicate operator"):
        s.sched.publish_epoch(e, SNAP)


def test_publish_epoch_rejects_unregistered_jailed_or_unstaked_operators(s):
    with boa.env.prank(s.admin), boa.reverts("scheduler: operator not active"):
        s.sched.publish_epoch([(funded(), s.model_id, 0, 8)], SNAP)
    with boa.env.prank(s.slasher):
        s.reg.jail(s.owners[0], boa.env.evm.patch.block_number + 10, "test")
    with boa.env.prank(s.admin), boa.reverts("scheduler: operator not active"):
        s.sched.publish_epoch(entries(s, (0, 8)), SNAP)
    with boa.env.prank(s.owners[1]):
        s.reg.request_unbond(ETH // 2)
    with boa.env.prank(s.admin), boa.reverts("scheduler: operator not active"):
        s.sched.publish_epoch([(s.operators[1], s.model_id, 0, 8)], SNAP)
    mine(10)
    with boa.env.prank(s.owners[0]):
        s.reg.unjail()
    with boa.env.prank(s.admin):
        s.sched.publish_epoch(entries(s, (0, 8)), SNAP)


def test_publish_epoch_rejects_unknown_or_inactive_models_and_empty_input(s):
    with boa.env.prank(s.admin):
        with boa.reverts("scheduler: unknown model"):
            s.sched.publish_epoch([(s.operators[0], 99, 0, 8)], SNAP)
        with boa.reverts("scheduler: empty allocation"):
            s.sched.publish_epoch([], SNAP)
        with boa.reverts("scheduler: empty snapshot hash"):
            s.sched.publish_epoch(entries(s, (0, 8)), b"\x00" * 32)
        s.models.set_active(s.model_id, False)
        with boa.reverts("scheduler: model inactive"):
            s.sched.publish_epoch(entries(s, (0, 8)), SNAP)


def test_only_the_coordinator_publishes_and_only_the_admin_sets_it(s):
    other = funded()
    with boa.env.prank(other):
        with boa.reverts("scheduler: caller is not the coordinator"):
            s.sched.publish_epoch(entries(s, (0, 8)), SNAP)
        with boa.reverts("ownable: caller is not the owner"):
            s.sched.set_coordinator(other)
    with boa.env.prank(s.admin):
        s.sched.set_coordinator(other)
    with boa.env.prank(other):
        assert s.sched.publish_epoch(entries(s, (0, 8)), SNAP) == 1


def test_two_models_each_need_their_own_complete_pipeline(s):
    with boa.env.prank(s.admin):
        m2 = s.models.register_model("other", 4, 64, b"\x03" * 32, b"\x04" * 32, 1, 1)
        e = [(s.operators[0], s.model_id, 0, 8), (s.operators[1], m2, 0, 2)]
        with boa.reverts("scheduler: no complete pipeline"):
            s.sched.publish_epoch(e, SNAP)
        e.append((s.operators[2], m2, 2, 4))
        assert s.sched.publish_epoch(e, SNAP) == 1
