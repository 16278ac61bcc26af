"""ModelRegistry unit tests (titanoboa): admin-only changes, validation, two-step ownership."""

from __future__ import annotations

import boa
import pytest

from tests.support.boa import deployer_for, funded

ROOT, TOK = b"\x01" * 32, b"\x02" * 32


@pytest.fixture
def admin():
    return funded()


@pytest.fixture
def models(admin):
    with boa.env.prank(admin):
        return deployer_for("ModelRegistry").deploy(0)


def test_admin_registers_a_model_with_sequential_ids(models, admin):
    with boa.env.prank(admin):
        a = models.register_model("smollm2-135m", 30, 576, ROOT, TOK, 10, 20)
        b = models.register_model("tiny", 8, 256, ROOT, TOK, 1, 2)
    assert (a, b) == (1, 2) and models.model_count() == 2
    m = models.models(1)
    assert (m.name, m.layers, m.hidden_size, m.price_in_wei, m.price_out_wei, m.active) == (
        "smollm2-135m",
        30,
        576,
        10,
        20,
        True,
    )
    assert models.id_by_name("tiny") == 2
    assert models.billing_info(2) == (8, 1, 2, True)


@pytest.mark.parametrize(
    "args, reason",
    [
        (("", 8, 256, ROOT, TOK, 1, 1), "models: empty name"),
        (("m", 0, 256, ROOT, TOK, 1, 1), "models: zero layers"),
        (("m", 70_000, 256, ROOT, TOK, 1, 1), "models: too many layers"),
        (("m", 8, 0, ROOT, TOK, 1, 1), "models: zero hidden size"),
        (("m", 8, 256, b"\x00" * 32, TOK, 1, 1), "models: empty weights root"),
        (("m", 8, 256, ROOT, b"\x00" * 32, 1, 1), "models: empty tokenizer hash"),
    ],
)
def test_register_model_rejects_bad_fields(models, admin, args, reason):
    with boa.env.prank(admin), boa.reverts(reason):
        models.register_model(*args)
    assert models.model_count() == 0


def test_register_model_rejects_a_taken_name(models, admin):
    with boa.env.prank(admin):
        models.register_model("m", 8, 256, ROOT, TOK, 1, 1)
        with boa.reverts("models: name taken"):
            models.register_model("m", 4, 256, ROOT, TOK, 1, 1)


def test_only_the_admin_adds_models_and_changes_prices(models, admin):
    with boa.env.prank(admin):
        models.register_model("m", 8, 256, ROOT, TOK, 1, 1)
    stranger = funded()
    with boa.env.prank(stranger):
        with boa.reverts("ownable: caller is not the owner"):
            models.register_model("x", 8, 256, ROOT, TOK, 1, 1)
        with boa.reverts("ownable: caller is not the owner"):
            models.set_prices(1, 5, 5)
        with boa.reverts("ownable: caller is not the owner"):
            models.set_active(1, False)
    assert models.billing_info(1) == (8, 1, 1, True)


def test_admin_changes_prices_and_retires_a_model(models, admin):
    with boa.env.prank(admin):
        models.register_model("m", 8, 256, ROOT, TOK, 1, 1)
        models.set_prices(1, 7, 9)
        models.set_active(1, False)
    assert models.billing_info(1) == (8, 7, 9, False)


def test_price_and_activation_changes_revert_for_unknown_models(models, admin):
    with boa.env.prank(admin):
        with boa.reverts("models: unknown model"):
            models.set_prices(5, 1, 1)
        with boa.reverts("models: unknown model"):
            models.set_active(5, True)


def test_ownership_moves_only_when_the_new_admin_accepts(models, admin):
    new = funded()
    with boa.env.prank(admin):
        models.transfer_ownership(new)
    with boa.env.prank(new):
        models.accept_ownership()
        models.register_model("m", 8, 256, ROOT, TOK, 1, 1)
    with boa.env.prank(admin), boa.reverts("ownable: caller is not the owner"):
        models.set_prices(1, 2, 2)


# ── serving precision and verification profile ─────────────────────────────────────────────────
def test_admin_records_the_serving_precision_and_profile_hash(models, admin):
    from verifier.profiles import SHIPPED

    prof = SHIPPED["bf16"]
    with boa.env.prank(admin):
        models.register_model("smollm2-135m", 30, 576, ROOT, TOK, 10, 20)
        assert tuple(models.serving(1)) == (0, b"\x00" * 32, 0, 0)
        models.set_serving(1, 2, prof.hash, *prof.chunk_rule)
        (ev,) = [e for e in models.get_logs() if type(e).__name__ == "ServingChanged"]  # read at once
    d, k = prof.chunk_rule  # the shipped bf16 profile's rule (verifier/profiles)
    assert 0 < d and 0 < k
    assert tuple(models.serving(1)) == (2, prof.hash, d, k)
    assert (type(ev).__name__, ev.model_id, ev.precision, ev.profile_hash, ev.max_ulp, ev.max_bad) == (
        "ServingChanged", 1, 2, prof.hash, d, k)


@pytest.mark.parametrize("precision, digest, rule, reason", [
    (0, b"\x03" * 32, (6, 4), "models: unknown precision"),
    (5, b"\x03" * 32, (6, 4), "models: unknown precision"),
    (1, b"\x00" * 32, (6, 4), "models: empty profile hash"),
    (1, b"\x03" * 32, (6, 32), "models: chunk rule out of range"),
    (1, b"\x03" * 32, (65536, 4), "models: chunk rule out of range"),
])
def test_set_serving_rejects_bad_fields(models, admin, precision, digest, rule, reason):
    with boa.env.prank(admin):
        models.register_model("m", 8, 256, ROOT, TOK, 1, 1)
        with boa.reverts(reason):
            models.set_serving(1, precision, digest, *rule)


def test_only_the_admin_sets_serving_and_only_for_known_models(models, admin):
    with boa.env.prank(admin):
        models.register_model("m", 8, 256, ROOT, TOK, 1, 1)
        with boa.reverts("models: unknown model"):
            models.set_serving(2, 1, b"\x03" * 32, 6, 4)
    with boa.env.prank(funded()), boa.reverts():
        models.set_serving(1, 1, b"\x03" * 32, 6, 4)
