"""JSON documents and the `veriplex sim` commands: round trips, canonical hash, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.allocate import allocate
from scheduler.errors import CannotPlace, InvalidInput, SchedulerError
from scheduler.schema import load_json, parse_plan, parse_snapshot
from scheduler.sim.catalogue import MODELS
from scheduler.sim.cluster import gen_cluster
from veriplex.cli import cli


def test_a_snapshot_survives_a_json_round_trip_with_the_same_hash(mixed_70b) -> None:
    again = parse_snapshot(json.loads(mixed_70b.canonical_json()))
    assert again == mixed_70b and again.canonical_hash() == mixed_70b.canonical_hash()


def test_the_hash_changes_when_any_input_changes(mixed_70b) -> None:
    doc = json.loads(mixed_70b.canonical_json())
    doc["nodes"][3]["vram_mib"] += 1
    assert parse_snapshot(doc).canonical_hash() != mixed_70b.canonical_hash()
    doc = json.loads(mixed_70b.canonical_json())
    doc["params"]["latency_bound_ms"] = 999.0
    assert parse_snapshot(doc).canonical_hash() != mixed_70b.canonical_hash()


def test_a_plan_survives_a_json_round_trip(mixed_70b) -> None:
    plan = allocate(mixed_70b)
    assert parse_plan(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["nodes"][0].pop("vram_mib"), r"nodes\[0\].vram_mib: missing"),
    (lambda d: d["nodes"][1].update(tflops="fast"), r"nodes\[1\].tflops: expected a finite number"),
    (lambda d: d["nodes"][2].update(vram_mib=-5), r"must be > 0, got -5"),
    (lambda d: d["nodes"].append(dict(d["nodes"][0])), "duplicate node id"),
    (lambda d: d["links"].update(rtt_ms=[]), "no RTT between regions"),
    (lambda d: d.update(nodes={}), "expected a list"),
])
def test_malformed_clusters_name_the_field_and_value(mutate, message) -> None:
    doc = gen_cluster(4, "mixed", ["us-east", "eu-west"], seed=2)
    mutate(doc)
    with pytest.raises(InvalidInput, match=message):
        parse_snapshot(doc, MODELS["llama3-8b"])


def test_malformed_json_text_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidInput, match="malformed JSON"):
        load_json(bad)


def test_cli_generates_allocates_and_simulates(tmp_path: Path) -> None:
    run = CliRunner().invoke
    c, a, g = tmp_path / "c.json", tmp_path / "a.json", tmp_path / "g.json"
    res = run(cli, ["sim", "gen-cluster", "--nodes", "10", "--mix", "datacenter", "--regions",
                    "us-east,eu-west", "--seed", "4", "-o", str(c)])
    assert res.exit_code == 0, res.output
    res = run(cli, ["sim", "allocate", "--cluster", str(c), "--model", "llama3-70b", "-o", str(a)])
    assert res.exit_code == 0, res.output
    res = run(cli, ["sim", "allocate", "--cluster", str(c), "--model", "llama3-70b",
                    "--solver", "greedy", "-o", str(g)])
    assert res.exit_code == 0, res.output
    assert json.loads(a.read_text())["solver"] != json.loads(g.read_text())["solver"]
    res = run(cli, ["sim", "--cluster", str(c), "--alloc", str(a), "--requests", "40",
                    "--rate", "10"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["completed"] == 40 and out["throughput_tok_s"] > 0


def test_cli_reports_cannot_place_with_the_shortfall(tmp_path: Path) -> None:
    c = tmp_path / "small.json"
    c.write_text(json.dumps(gen_cluster(2, "RTX3090", seed=0)))
    res = CliRunner().invoke(cli, ["sim", "allocate", "--cluster", str(c), "--model", "llama3-70b"])
    assert res.exit_code == 1
    assert "cannot place: the model is larger than the pool" in res.output
    assert "short by" in res.output


def test_cli_reports_malformed_json_and_unknown_models(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    res = CliRunner().invoke(cli, ["sim", "allocate", "--cluster", str(bad), "--model", "llama3-8b"])
    assert res.exit_code == 1 and "malformed JSON" in res.output
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(gen_cluster(2, seed=0)))
    res = CliRunner().invoke(cli, ["sim", "allocate", "--cluster", str(ok), "--model", "gpt-9"])
    assert res.exit_code == 1 and "neither a known model" in res.output
    res = CliRunner().invoke(cli, ["sim"])
    assert res.exit_code == 2 and "--cluster and --alloc" in res.output


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.just(10**400)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["nodes", "links", "params", "model", "version"]),
       st.integers(0, 3), st.sampled_from(["id", "region", "vram_mib", "tflops", "mem_bw_gbps",
                                          "net_mbps", "available", "layer_ms", "rtt_ms"]), _json)
def test_any_corrupted_document_is_an_input_error_or_a_valid_snapshot(top, idx, field, junk) -> None:
    doc = gen_cluster(4, "mixed", ["us-east", "eu-west"], seed=1)
    doc["model"] = MODELS["llama3-8b"].to_dict()
    target = doc.get(top)
    if isinstance(target, list) and target:
        item = target[idx % len(target)]
        if isinstance(item, dict):
            item[field] = junk
    elif isinstance(target, dict):
        target[field] = junk
    else:
        doc[top] = junk
    try:
        snap = parse_snapshot(doc)
    except InvalidInput:
        return
    try:
        allocate(snap)
    except SchedulerError:
        pass


@settings(max_examples=100, deadline=None)
@given(_json)
def test_arbitrary_json_is_never_a_crash(junk) -> None:
    for parse in (parse_snapshot, parse_plan):
        try:
            parse(junk)
        except InvalidInput:
            pass


def test_a_latency_bound_no_pipeline_meets_is_a_cannot_place(mixed_70b) -> None:
    doc = json.loads(mixed_70b.canonical_json())
    doc["params"]["latency_bound_ms"] = 0.001
    with pytest.raises(CannotPlace, match="latency bound"):
        allocate(parse_snapshot(doc))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["layers", "hidden", "heads", "kv_heads", "intermediate", "vocab",
                        "dtype_bytes", "model_id", "name", "tied_embeddings"]), _json)
def test_any_corrupted_model_is_an_input_error_or_places(field, junk) -> None:
    doc = gen_cluster(3, "datacenter", ["us-east"], seed=1)
    doc["model"] = dict(MODELS["smollm2-135m"].to_dict(), **{field: junk})
    try:
        snap = parse_snapshot(doc)
    except InvalidInput:
        return
    try:
        allocate(snap)
    except SchedulerError:
        pass


def test_a_plan_rebuilt_from_its_epoch_rows_has_the_same_shards_and_routes(mixed_70b) -> None:
    from scheduler.route import Router
    from scheduler.schema import check_plan, plan_from_epoch

    plan = allocate(mixed_70b)
    rebuilt = plan_from_epoch(mixed_70b, plan.epoch_assignments(mixed_70b), plan.snapshot_hash)
    assert check_plan(rebuilt, mixed_70b) == []
    assert set(rebuilt.stages()) == set(plan.stages())
    assert Router(mixed_70b, rebuilt).route({}, 100, 20) == Router(mixed_70b, plan).route({}, 100, 20)


def test_epoch_rows_that_leave_a_gap_are_refused(mixed_70b) -> None:
    from scheduler.errors import InvalidPlan
    from scheduler.schema import plan_from_epoch

    rows = allocate(mixed_70b).epoch_assignments(mixed_70b)
    # Keep one first stage only: the other replicas' later stages join no pipeline.
    broken = [r for r in rows if r[2] != 0] + [next(r for r in rows if r[2] == 0)]
    with pytest.raises(InvalidPlan):
        plan_from_epoch(mixed_70b, broken)
    with pytest.raises(InvalidPlan, match="unknown operator"):
        plan_from_epoch(mixed_70b, [("0xnobody", mixed_70b.model.model_id, 0, 80)])


def test_cli_takes_a_snapshot_with_its_model_and_a_workload_file(tmp_path: Path, mixed_70b) -> None:
    snap, alloc, work = tmp_path / "snap.json", tmp_path / "a.json", tmp_path / "w.json"
    snap.write_bytes(mixed_70b.canonical_json())
    work.write_text(json.dumps({"requests": 30, "rate_per_s": 5.0, "output_mean": 16}))
    run = CliRunner().invoke
    res = run(cli, ["sim", "allocate", "--cluster", str(snap), "-o", str(alloc)])
    assert res.exit_code == 0, res.output
    assert json.loads(alloc.read_text())["snapshot_hash"] == mixed_70b.canonical_hash()
    res = run(cli, ["sim", "--cluster", str(snap), "--alloc", str(alloc), "--workload", str(work),
                    "--policy", "rr"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["requests"] == 30
    work.write_text(json.dumps({"requests": 30, "speed": 2}))
    res = run(cli, ["sim", "--cluster", str(snap), "--alloc", str(alloc), "--workload", str(work)])
    assert res.exit_code == 1 and "unknown fields ['speed']" in res.output


def test_cli_compare_scores_ours_and_both_baselines(tmp_path: Path) -> None:
    c, w = tmp_path / "c.json", tmp_path / "w.json"
    c.write_text(json.dumps(gen_cluster(12, "mixed", ["us-east"], seed=5)))
    w.write_text(json.dumps({"requests": 40, "rate_per_s": 1000.0, "output_mean": 16}))
    res = CliRunner().invoke(cli, ["sim", "compare", "--cluster", str(c), "--model", "llama3-70b",
                                   "--workload", str(w)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out.pop("ours_estimate")["throughput_tok_s"] > 0
    assert set(out) == {"ours", "ours_rr", "ours_noload", "greedy_router", "greedy_rr"}
    assert {out[k]["policy"] for k in out} == {"router", "router-noload", "round-robin"}
    assert all(out[k]["completed"] == 40 for k in out)


def _cli_allocate(tmp_path: Path, text: str) -> str:
    c = tmp_path / "cluster.json"
    c.write_text(text)
    res = CliRunner().invoke(cli, ["sim", "allocate", "--cluster", str(c), "--model", "llama3-8b"])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.output


def test_cli_refuses_json_nested_too_deeply_without_a_traceback(tmp_path: Path) -> None:
    out = _cli_allocate(tmp_path, "[" * 100_000 + "]" * 100_000)
    assert "malformed JSON" in out and "nested deeper than" in out


def test_cli_refuses_integers_beyond_float_range_naming_the_field(tmp_path: Path) -> None:
    doc = gen_cluster(2, seed=0)
    doc["nodes"][0]["vram_mib"] = 10**400
    out = _cli_allocate(tmp_path, json.dumps(doc))
    assert "cluster.nodes[0].vram_mib: expected a finite number" in out
    doc = gen_cluster(2, seed=0)
    doc["links"]["pairs"] = [[doc["nodes"][0]["id"], doc["nodes"][1]["id"], 10**400, 1.0]]
    assert "links.pairs[0]" in _cli_allocate(tmp_path, json.dumps(doc))


def test_cli_names_json_types_and_refuses_other_versions(tmp_path: Path) -> None:
    doc = gen_cluster(2, seed=0)
    doc["nodes"][1] = None
    assert "cluster.nodes[1]: expected an object, got null" in _cli_allocate(tmp_path, json.dumps(doc))
    doc = gen_cluster(2, seed=0)
    doc["version"] = 2
    assert "cluster.version: only version 1 is understood, got 2" in _cli_allocate(
        tmp_path, json.dumps(doc))


def _cli_sim(tmp_path: Path, alloc: dict) -> str:
    c, a = tmp_path / "c.json", tmp_path / "a.json"
    c.write_text(json.dumps(gen_cluster(6, "datacenter", seed=2)))
    a.write_text(json.dumps(alloc))
    res = CliRunner().invoke(cli, ["sim", "--cluster", str(c), "--alloc", str(a), "--requests", "5"])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.output


def test_cli_refuses_allocations_with_bad_estimates_huge_layers_or_no_replicas(tmp_path: Path) -> None:
    snap = parse_snapshot(gen_cluster(6, "datacenter", seed=2), model=MODELS["llama3-8b"])
    good = allocate(snap).to_dict()
    assert "allocation.estimate" in _cli_sim(tmp_path, {**good, "estimate": {"x": "fast"}})
    assert "allocation.estimate" in _cli_sim(tmp_path, {**good, "estimate": {"x": None}})
    huge = json.loads(json.dumps(good))
    huge["replicas"][0]["stages"][-1]["end"] = 10**400
    assert "stages[" in _cli_sim(tmp_path, huge) and "expected a finite number" in _cli_sim(
        tmp_path, huge)
    assert "no replicas" in _cli_sim(tmp_path, {**good, "replicas": []})


def test_a_run_where_nothing_completes_prints_strict_json_with_null_latencies(
        tmp_path: Path, mixed_70b) -> None:
    snap, alloc, work = tmp_path / "snap.json", tmp_path / "a.json", tmp_path / "w.json"
    snap.write_bytes(mixed_70b.canonical_json())
    alloc.write_text(json.dumps(allocate(mixed_70b).to_dict()))
    # prompts far beyond any node's KV budget: every request is refused at admission
    work.write_text(json.dumps({"requests": 3, "prompt_mean": 10**6, "prompt_max": 10**6,
                                "sigma": 0.0}))
    res = CliRunner().invoke(cli, ["sim", "--cluster", str(snap), "--alloc", str(alloc),
                                   "--workload", str(work)])
    assert res.exit_code == 0, res.output

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    out = json.loads(res.output, parse_constant=refuse)
    assert (out["completed"], out["rejected"]) == (0, 3)
    assert out["latency_p99_ms"] is None and out["ttft_p50_ms"] is None
