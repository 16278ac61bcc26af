"""The parts of a request's proof view that need more than one event: the sampling draw
recomputed from indexed blocks, its per-stage commitments as far as the chain knows them, where
the rest lives (the gateway's receipt), and the exact `veriplex audit` commands an auditor runs.

What the chain has: every settled record carries one commitment root, keccak256 of the ABI-encoded
list of stage commitments (`contracts.verification.commitment_root`). The stage commitments
themselves (root, positions, hidden size, token count per stage) reach the chain only when the
request is sampled: `Verification.open_task` takes them as call data and checks they hash to the
record's root, and `TaskOpened` logs the sampled stage's. The stage operators' signatures over
their commitments never reach the chain: they are in the gateway's receipt
(`GET <gateway>/v1/receipts/<request id>`), which `veriplex audit` checks against the chain.
"""

from __future__ import annotations

import shlex
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contracts.errors import ContractsError
from contracts.verification import BPS, anchor_block, batch_seed_of, commitment_root, sample_draw
from devnet.explorer.models import Block, Log, Request, Tx
from protocol.messages import StageCommit

ZERO_ROOT = "0x" + "00" * 32


def _stage_commit(d: dict[str, Any]) -> StageCommit:
    return StageCommit(bytes.fromhex(str(d["root"])[2:]), int(d["positions"]),
                       int(d["hidden_size"]), int(d.get("n_tokens", 0)))


def stage_commitments(s: Session, r: Request, task_opened: list[dict[str, Any]]) -> dict[str, Any]:
    """The request's stage commitments as the chain has them (see the module docstring)."""
    stages = list((r.pipeline or {}).get("stages", []))
    out: dict[str, Any] = {"record_root": r.commitment_root, "stages": [], "source": None,
                           "source_tx": None, "matches_record_root": None}
    if r.commitment_root == ZERO_ROOT:
        out["note"] = ("The record's commitment root is zero: the gateway got no stage "
                       "commitments, so nothing about this answer can be verified.")
        return out
    for ev in task_opened:  # the open_task call carries every stage's commitment
        tx = s.get(Tx, ev["tx_hash"])
        if tx is None or not tx.status or tx.method != "open_task" or not tx.args:
            continue
        commits = tx.args.get("stage_commits") or []
        if len(commits) != len(stages):
            continue
        try:
            got = "0x" + commitment_root([_stage_commit(c) for c in commits]).hex()
        except (ContractsError, KeyError, TypeError, ValueError):
            continue
        out.update(source="open_task call data", source_tx=tx.hash,
                   matches_record_root=got == r.commitment_root)
        out["stages"] = [
            {"stage": j, "operator": st.get("operator"), "layer_start": st.get("layer_start"),
             "layer_end": st.get("layer_end"), "root": c["root"], "positions": c["positions"],
             "hidden_size": c["hidden_size"], "n_tokens": c.get("n_tokens", 0)}
            for j, (st, c) in enumerate(zip(stages, commits, strict=True))]
        break
    else:
        a = (task_opened[0].get("args") or {}) if task_opened else {}
        c = a.get("stage_commit")
        if isinstance(c, dict) and "root" in c:  # call not decodable: the sampled stage only
            out.update(source="TaskOpened event (the sampled stage only)",
                       source_tx=task_opened[0]["tx_hash"])
            out["stages"] = [{"stage": a.get("stage"), "operator": a.get("stage_operator"),
                              "layer_start": a.get("layer_start"), "layer_end": a.get("layer_end"),
                              "root": c["root"], "positions": c.get("positions"),
                              "hidden_size": c.get("hidden_size"),
                              "n_tokens": c.get("n_tokens", 0)}]
    if out["stages"]:
        out["note"] = ("Stage commitments from the chain; the stage operators' signatures over "
                       "them are not on chain: they are in the gateway's receipt.")
    else:
        out["note"] = ("The chain stores only the record's commitment root (the request was not "
                       "opened for verification, which puts the stage commitments on chain). "
                       "Each stage's operator, layers, root, positions and signature are in the "
                       "gateway's receipt; `veriplex audit` on that receipt checks they hash to "
                       "this root and that each stage's operator signed its own.")
    return out


def audit_guide(request_id: str, gateway: str, rpc_url: str | None,
                gateway_url: str | None) -> dict[str, Any]:
    """Where the gateway receipt is, and the exact audit commands for this request."""
    rpc = f" --rpc-url {shlex.quote(rpc_url)}" if rpc_url else ""
    path = f"/v1/receipts/{request_id}"
    url = gateway_url.rstrip("/") + path if gateway_url else None
    fetch = (f"curl -fsS {shlex.quote(url)} -o receipt-{request_id}.json" if url else
             f"curl -fsS GATEWAY_URL{path} -o receipt-{request_id}.json")
    return {
        "gateway_receipt": {"gateway": gateway, "path": path, "url": url},
        "audit_commands": [
            {"what": "This page's receipt, against the chain: settlement, inclusion in the batch, "
                     "pipeline, verification outcome and payouts (stage signatures are not on "
                     "chain: that check is skipped)",
             "command": f"veriplex audit request-{request_id}.json{rpc}"},
            {"what": "The gateway's receipt, which adds every stage's commitment and its "
                     "operator's signature" + ("" if url else
                                              " (GATEWAY_URL: the gateway that served it, "
                                              f"address {gateway})"),
             "command": f"{fetch} && veriplex audit receipt-{request_id}.json{rpc}"},
        ],
    }


def _latest(s: Session, event: str, address: str) -> Log | None:
    # lower() keeps SQLite on the (event, topic) index: a rare event, not all of a busy address
    q = select(Log).where(Log.event == event, func.lower(Log.address) == address)
    return s.scalars(q.order_by(Log.block_number.desc(), Log.log_index.desc()).limit(1)).first()


def draw_context(s: Session, payments: str) -> dict[str, Any]:
    """What every batch of one Payments shares in its sampling draw: its Verification contract,
    the randomness source, the sample rate and the delay that places the anchor block after the
    settle block, or a `note` saying why the draw cannot be recomputed."""
    out: dict[str, Any] = {"verification": None, "randomness_source": None, "seed": None,
                           "anchor_block": None, "sample_bps": None}
    roles = _latest(s, "RolesSet", payments)  # the values the contract reads now, as it does
    if roles is None:
        out["note"] = "The settling Payments' roles are not in the index."
        return out
    ver = str(roles.args.get("verification", "0x0")).lower()
    if int(ver, 16) == 0:
        out["note"] = "The settling Payments has no Verification contract: nothing is sampled."
        out["sample_bps"] = 0
        return out
    ver_params, source = _latest(s, "ParamsSet", ver), _latest(s, "RandomnessSet", ver)
    out["verification"] = ver
    p = (ver_params.args or {}).get("params") if ver_params is not None else None
    if not isinstance(p, dict) or source is None or "randomness_delay" not in p:
        out["note"] = f"The Verification contract {ver} has no parameters or randomness indexed."
        return out
    src = str(source.args["source"]).lower()
    created = s.scalars(select(Tx).where(Tx.created == src).limit(1)).first()
    out.update(randomness_source=src,
               randomness_contract=created.contract if created is not None else None,
               sample_bps=int(p["sample_bps"]), delay=int(p["randomness_delay"]))
    return out


def batch_draw(s: Session, r: Request, context: dict[str, Any] | None = None,
               anchor_hash: str | None = None) -> dict[str, Any]:
    """The sampling randomness of `r`'s batch (the same for every request in it): the
    `draw_context` plus the anchor block (settle block + randomness delay) and the seed, or a
    `note` saying why not (yet). `context` and `anchor_hash` may be passed in when already read
    (lists of requests)."""
    out = dict(context if context is not None else draw_context(s, r.payments))
    if "delay" not in out:
        return out
    anchor = anchor_block(int(r.block_number), out["delay"])
    out["anchor_block"] = anchor
    if anchor_hash is None:
        block = s.get(Block, anchor)
        anchor_hash = block.hash if block is not None else None
    if out.get("randomness_contract") != "BlockhashRandomness":
        out["note"] = (f"The randomness source {out['randomness_source']} is not the devnet's "
                       "BlockhashRandomness: its value at the anchor block decides "
                       "(Verification.is_sampled).")
    elif anchor_hash is None:
        out["note"] = f"The anchor block {anchor} is not mined (or indexed) yet: not drawn yet."
    else:
        out.update(seed="0x" + batch_seed_of(bytes.fromhex(anchor_hash[2:]),
                                             int(r.batch_id)).hex(), anchor_hash=anchor_hash)
    return out


def sampled_from(draw: dict[str, Any], request_id: str) -> bool | None:
    """Whether a batch's draw (`batch_draw`) selects `request_id`; None when not known."""
    if draw.get("sample_bps") == 0:
        return False
    if draw.get("seed") is None or draw.get("sample_bps") is None:
        return None
    d = sample_draw(bytes.fromhex(draw["seed"][2:]), bytes.fromhex(request_id[2:]))
    return bool(d < int(draw["sample_bps"]))


def sampling(s: Session, r: Request, task_opened: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch's sampling randomness and whether it selected the request, recomputed from the
    index by the contract's rule (`TaskOpener._fresh_seed`, `_sampled`): anchor = the batch's
    settle block + randomness delay; seed = keccak(abi(value(anchor),
    batch id)); sampled iff keccak(abi(seed, request id, 0)) mod 10,000 < sample_bps. The value
    is the anchor's block hash when the source is `BlockhashRandomness` (the devnet's); another
    source (VRF, beacon) is named and left to `Verification.is_sampled`."""
    out = batch_draw(s, r)
    out.pop("delay", None)
    out.setdefault("randomness_contract", None)
    out.setdefault("draw_bps", None)
    out.setdefault("sampled", None)
    if out["seed"] is not None:
        draw = sample_draw(bytes.fromhex(out["seed"][2:]), bytes.fromhex(r.request_id[2:]))
        out.update(draw_bps=draw, sampled=draw < out["sample_bps"])
        out["note"] = (f"Seed = keccak(hash of block {out['anchor_block']}, batch {r.batch_id}); "
                       f"this request draws {draw} of {BPS} against a sample rate of "
                       f"{out['sample_bps']}: "
                       + ("sampled for verification." if out["sampled"] else "not sampled."))
    if out.get("sample_bps") == 0 and out["verification"] is None:
        out["sample_bps"] = None  # no Verification contract: no rate to show
    if task_opened:  # the contract's own record of the seed it used
        out["task_seed"] = (task_opened[0].get("args") or {}).get("seed")
    return out
