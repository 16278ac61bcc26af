"""The stage executor: split models reproduce the whole model bit for bit; bad input is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from node.runtime.executor import StageExecutor, generate_local
from node.runtime.models.errors import ExecutionError, UnknownSession
from node.runtime.models.reference import load_whole_model, whole_model_reference
from node.runtime.shard import load_shard
from protocol.sampling import Sampling, sample_token, step_seed

PROMPT = [5, 17, 42, 99, 7, 250, 13, 64, 3, 77, 150, 8]
NEW_TOKENS = 12
SPLITS = {1: (0, 8), 2: (0, 3, 8), 3: (0, 2, 5, 8)}


def stages_for(ckpt: Path, cuts: tuple[int, ...]) -> list[StageExecutor]:
    return [
        StageExecutor(load_shard(ckpt, a, b, device="cpu"))
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]


@pytest.mark.parametrize("n_stages", [1, 2, 3])
def test_splitting_into_stages_reproduces_whole_model_hidden_states_and_greedy_tokens_exactly(
    tiny_model: Path, n_stages: int
):
    ref = whole_model_reference(load_whole_model(tiny_model), PROMPT, NEW_TOKENS)
    ref_tokens, ref_rows = ref.tokens, ref.rows
    cuts = SPLITS[n_stages]
    gen = generate_local(stages_for(tiny_model, cuts), PROMPT, NEW_TOKENS)
    assert gen.tokens == ref_tokens
    assert len(set(gen.tokens)) > 3, "the tiny model should not be degenerate, or this test is weak"
    for k, end in enumerate(cuts[1:]):
        # atol=0: same device, dtype, kernels and shapes as the whole model; a split only moves where
        # the Python loop is cut, never the arithmetic, so any difference at all is a bug.
        torch.testing.assert_close(gen.stage_hidden[k], ref_rows[end], rtol=0, atol=0)


@pytest.fixture(scope="module")
def tiny_mistral_sliding(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Mistral whose 6-position sliding window is far shorter than the test's sequence."""
    from node.runtime.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-mistral"), arch="mistral", seed=2,
                            sliding_window=6)


@pytest.mark.parametrize("n_stages", [1, 2, 3])
def test_a_mistral_with_a_sliding_window_splits_into_stages_exactly(
    tiny_mistral_sliding: Path, n_stages: int
):
    ref = whole_model_reference(load_whole_model(tiny_mistral_sliding), PROMPT, NEW_TOKENS)
    full = load_whole_model(tiny_mistral_sliding)
    assert full.config.sliding_window == 6 < len(PROMPT) + NEW_TOKENS  # the window really slides
    cuts = SPLITS[n_stages]
    gen = generate_local(stages_for(tiny_mistral_sliding, cuts), PROMPT, NEW_TOKENS)
    assert gen.tokens == ref.tokens
    for k, end in enumerate(cuts[1:]):
        torch.testing.assert_close(gen.stage_hidden[k], ref.rows[end], rtol=0, atol=0)


def test_verification_prefill_over_known_positions_matches_the_decoded_rows(tiny_llama: Path):
    first, last = stages_for(tiny_llama, (0, 4, 8))
    gen = generate_local([first, last], PROMPT, NEW_TOKENS)
    seq = torch.tensor(PROMPT + gen.tokens[:-1])
    # A verifier re-runs the last stage on the first stage's rows with one prefill pass.
    check = last.run(gen.stage_hidden[0])
    assert check.hidden.shape == gen.stage_hidden[1].shape
    # Not bit-identical: one prefill over 23 positions vs a 12-position prefill plus 11 decode steps
    # runs GEMM / attention kernels of other shapes, so summation order differs (≈2e-5 here on
    # values of order 1); that benign noise is what the verifier's tolerance test is for.
    torch.testing.assert_close(check.hidden, gen.stage_hidden[1], rtol=0, atol=1e-3)
    p = len(PROMPT)
    assert check.logits is not None and check.logits.shape[0] == seq.numel()
    assert check.logits[p - 1 :].argmax(-1).tolist() == gen.tokens


def test_kv_bytes_per_token_matches_the_cache_actually_held(tiny_qwen2: Path):
    ex = StageExecutor(load_shard(tiny_qwen2, 2, 6, device="cpu"))
    s = ex.open(b"\x01" * 32)
    ex.forward(s.request_id, torch.zeros(9, ex.shard.hidden_size), 0)
    held = sum(
        layer.keys.nbytes + layer.values.nbytes
        for layer in s.cache.layers
        if getattr(layer, "is_initialized", False)
    )
    assert held == ex.kv_bytes_per_token * 9


def test_seeded_sampling_is_reproducible_and_the_seed_matters(tiny_llama: Path):
    st = stages_for(tiny_llama, (0, 8))
    hot = Sampling(temperature=1.0, top_p=0.95, seed=7)
    a = generate_local(st, PROMPT, NEW_TOKENS, hot).tokens
    b = generate_local(st, PROMPT, NEW_TOKENS, hot).tokens
    c = generate_local(
        st, PROMPT, NEW_TOKENS, Sampling(temperature=1.0, top_p=0.95, seed=8)
    ).tokens
    assert a == b
    assert a != c


def test_sampling_a_single_position_needs_no_replay_of_earlier_draws():
    logits = torch.linspace(-3, 3, 50)
    params = Sampling(temperature=2.0, top_p=0.9, seed=123)
    alone = sample_token(logits, params, position=40)
    for p in range(40):  # draws at other positions do not disturb position 40
        sample_token(logits, params, position=p)
    assert sample_token(logits, params, position=40) == alone
    assert step_seed(123, 40) != step_seed(123, 41)


def test_tiny_top_p_keeps_only_the_most_likely_token():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.9])
    for seed in range(20):
        assert sample_token(logits, Sampling(temperature=1.0, top_p=1e-6, seed=seed), 3) == 1


def test_greedy_breaks_ties_toward_the_lowest_token_id():
    assert sample_token(torch.tensor([0.0, 3.0, 1.0, 3.0]), Sampling(), 0) == 1


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"seed": -1}, "seed")],
)
def test_sampling_params_out_of_range_are_refused_quoting_the_value(kwargs: dict, needle: str):
    with pytest.raises(ValueError, match=needle):  # pydantic's ValidationError: one Sampling type
        Sampling(**kwargs)


@pytest.fixture(scope="module")
def two_stages(tiny_llama: Path) -> tuple[StageExecutor, StageExecutor]:
    return tuple(stages_for(tiny_llama, (0, 4, 8)))  # type: ignore[return-value]


def test_first_stage_refuses_hidden_rows_and_out_of_vocab_ids(two_stages):
    first, _ = two_stages
    first.open(b"a" * 32)
    try:
        with pytest.raises(ExecutionError, match=r"token ids of shape \(T,\)"):
            first.forward(b"a" * 32, torch.zeros(3, 256), 0)
        with pytest.raises(
            ExecutionError, match=r"token ids must be in \[0, \d+\), got range \[0, 100000\]"
        ):
            first.forward(b"a" * 32, torch.tensor([0, 100000]), 0)
    finally:
        first.close(b"a" * 32)


def test_middle_stage_refuses_wrong_shape_dtype_and_non_finite_rows(two_stages):
    _, last = two_stages
    rid = b"b" * 32
    last.open(rid)
    try:
        with pytest.raises(ExecutionError, match=r"shape \(T, 256\).*got \(3, 255\)"):
            last.forward(rid, torch.zeros(3, 255), 0)
        with pytest.raises(ExecutionError, match="must be torch.float32, got torch.float16"):
            last.forward(rid, torch.zeros(3, 256, dtype=torch.float16), 0)
        bad = torch.zeros(3, 256)
        bad[1, 7] = float("nan")
        with pytest.raises(ExecutionError, match="NaN"):
            last.forward(rid, bad, 0)
    finally:
        last.close(rid)


def test_positions_must_arrive_in_order_without_gaps(two_stages):
    first, _ = two_stages
    rid = b"c" * 32
    first.open(rid)
    try:
        first.forward(rid, torch.tensor([1, 2, 3]), 0)
        with pytest.raises(ExecutionError, match="starts at position 5 but the cache holds 3"):
            first.forward(rid, torch.tensor([4]), 5)
        first.forward(rid, torch.tensor([4]), 3)  # the session is still usable
        assert first.session(rid).length == 4
    finally:
        first.close(rid)


def test_positions_beyond_the_models_context_are_refused(two_stages):
    first, _ = two_stages
    with pytest.raises(ExecutionError, match="exceed the model's max_position_embeddings"):
        first.run(torch.zeros(first.max_positions + 1, dtype=torch.int64))


def test_unknown_and_duplicate_sessions_are_clear_errors(two_stages):
    first, _ = two_stages
    with pytest.raises(UnknownSession, match="no session 6464"):
        first.forward(b"dd", torch.tensor([1]), 0)
    with pytest.raises(UnknownSession):
        first.close(b"dd")
    first.open(b"ee")
    try:
        with pytest.raises(ExecutionError, match="already open"):
            first.open(b"ee")
    finally:
        first.close(b"ee")


def test_idle_sessions_are_freed_and_busy_ones_kept(two_stages):
    first, _ = two_stages
    first.open(b"idle")
    busy = first.open(b"busy")
    first.session(b"idle").last_used = busy.last_used - 100.0
    assert first.close_idle(max_idle_s=50.0, now=busy.last_used + 1.0) == [b"idle"]
    assert list(first.sessions) == [b"busy"]
    first.close(b"busy")


def test_generate_local_refuses_non_contiguous_stages(tiny_llama: Path):
    with pytest.raises(ExecutionError, match="not contiguous"):
        generate_local(stages_for(tiny_llama, (0, 3)) + stages_for(tiny_llama, (4, 8)), PROMPT, 2)


def test_a_bf16_split_reproduces_the_one_stage_bf16_run_exactly(tiny_qwen2: Path):
    # bf16 is the CUDA default; on CPU the same claim holds for the same reason as fp32.
    def stages(cuts):
        return [
            StageExecutor(load_shard(tiny_qwen2, a, b, device="cpu", dtype=torch.bfloat16))
            for a, b in zip(cuts, cuts[1:], strict=False)
        ]

    one = generate_local(stages((0, 8)), PROMPT, 6)
    three = generate_local(stages((0, 2, 5, 8)), PROMPT, 6)
    assert three.tokens == one.tokens
    assert three.stage_hidden[-1].dtype == torch.bfloat16
    torch.testing.assert_close(three.stage_hidden[-1], one.stage_hidden[0], rtol=0, atol=0)
