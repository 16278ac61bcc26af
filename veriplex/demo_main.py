"""The main job, scripted: `veriplex up` with one cheating worker, then a paying client.

`run_demo(options)` brings the network up (`veriplex.up.bring_up`: SmolLM2 — or a tiny model —
split into a 2-stage pipeline, two standby workers free to verify, one pipeline worker serving
perturbed weights), then acts as a client would, through the `veriplex` CLI and the unmodified
`openai` package: a wallet, funds, a deposit, an API key for the gateway, then paid chat
requests, plain and streaming. It follows each request on chain — settled in a batch, a
verification task opened (every request is sampled in the demo), the committee's revealed
verdicts, the final status, slashes and refunds — and sends more requests (up to a bound) until
the perturbed worker is slashed. Then the network heals (`veriplex.demo_heal`): the coordinator
evicts the cheater and promotes a standby into its layers in a new epoch, and the next requests
are served and followed until one is verified PASSED. `Observed` is what it saw; the command
prints it and fails unless a request passed after the eviction, the cheater was slashed and
evicted, and no keeper transaction reverted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from veriplex.demo_heal import (
    Healing,
    epoch_rows,
    keeper_reverts,
    measure_healing,
    wait_eviction,
)
from veriplex.up import Network, UpError, UpOptions, bring_up

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What is 12 plus 30?",
    "Give a synonym for 'quick'.",
    "What do bees make?",
    "Say hello in Spanish.",
    "What colour is the sky on a clear day?",
]
FINAL = {"PASSED", "FRAUD", "REFUNDED", "UNRESOLVED", "VOID", "SUSPECTED"}


class DemoFailed(RuntimeError):
    """The scenario ran but did not show what it must (or a step failed); says what and why."""


@dataclass
class Request:
    kind: str  # "chat" | "stream"
    prompt: str
    request_id: str
    answer: str
    charge_wei: int
    tokens: tuple[int, int]
    task_id: int = 0
    stage: int | None = None
    stage_operator: str = ""
    verdicts: dict[str, bool] = field(default_factory=dict)
    status: str = "waiting"
    refunded_wei: int = 0


@dataclass
class Observed:
    requests: list[Request] = field(default_factory=list)
    slashes: list[dict[str, Any]] = field(default_factory=list)  # StageSlashed events
    perturbed: list[str] = field(default_factory=list)
    stake_before: dict[str, int] = field(default_factory=dict)
    stake_after: dict[str, int] = field(default_factory=dict)
    earned: dict[str, int] = field(default_factory=dict)  # pipeline operator -> owner's credit
    released: list[int] = field(default_factory=list)  # batch ids released from escrow
    timings: dict[str, float] = field(default_factory=dict)
    heal: Healing = field(default_factory=Healing)

    def passed(self) -> list[Request]:
        return [r for r in self.requests if r.status == "PASSED"]

    def perturbed_slashed(self) -> list[dict[str, Any]]:
        bad = {a.lower() for a in self.perturbed}
        return [s for s in self.slashes if s["stage_operator"].lower() in bad]

    def done(self) -> bool:
        return bool(self.passed()) and bool(self.perturbed_slashed())


@dataclass
class DemoOptions:
    up: UpOptions
    requests: int = 4  # sent first; more follow (up to max_requests) until both outcomes show
    max_requests: int = 10
    max_tokens: int = 24
    timeout_s: float = 300.0  # for the verification outcomes, after the first request
    eviction_timeout_s: float = 90.0  # from the slash to an epoch without the cheater
    retry_503_s: float = 60.0  # a request refused while the coordinator re-allocates is retried
    payout_timeout_s: float = 60.0  # then for a batch's escrow to be released


def client_setup(net: Network) -> str:
    """A client wallet, funded, with a deposit and an API key naming the gateway: the token."""
    pw = ["--password-file", str(net.password_file)]
    net.cli("wallet", "new", "client", *pw)
    net.cli("devnet", "fund", "client", "5", "--from-account", "9")
    net.cli("client", "deposit", "1", "--account", "client", *pw)
    out = net.cli("client", "key", "create", "--account", "client", "--cap", "0.5", "--expires",
                  "1d", "--gateway", net.gateway_address, *pw, "--json")
    return str(json.loads(out)["api_key"])


def ask(api: Any, model: str, prompt: str, stream: bool, max_tokens: int) -> Request:
    """One paid chat request through the official client; its answer and receipt."""
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        r = api.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                        temperature=0)
        receipt = r.model_extra["veriplex"]
        text = r.choices[0].message.content or ""
    else:
        parts: list[str] = []
        receipt = None
        for chunk in api.chat.completions.create(model=model, messages=messages,
                                                 max_tokens=max_tokens, temperature=0,
                                                 stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            extra = chunk.model_extra or {}
            if extra.get("veriplex"):
                receipt = extra["veriplex"]
        if receipt is None:
            raise DemoFailed("the stream ended without its veriplex receipt")
        text = "".join(parts)
    tokens = receipt.get("tokens") or {}
    return Request("stream" if stream else "chat", prompt, receipt["request_id"], text,
                   int(receipt["charge_wei"]),
                   (int(tokens.get("prompt", 0)), int(tokens.get("completion", 0))))


def follow(chain: Any, reqs: list[Request], obs: Observed, from_block: int) -> None:
    """Refresh every request's verification state and the slashes from chain events."""
    from contracts.verification import TaskStatus

    v = chain.verification
    for r in reqs:
        if r.status in FINAL and (r.status != "FRAUD" or r.refunded_wei):
            continue  # a convicted stage's client is refunded after the verdict: keep looking
        rid = bytes.fromhex(r.request_id[2:])
        if not r.task_id:
            r.task_id = v.task_of(rid)
            if not r.task_id:
                continue
        t = v.task(r.task_id)
        if t is None:
            continue
        r.stage, r.stage_operator = t.stage, t.stage_operator
        for e in v.events("VerdictRevealed", from_block=from_block, task_id=r.task_id):
            # a PASS (kind 1) vouches for the stage; FAIL / SUSPECT / NO_INPUT do not
            a = e.args
            r.verdicts[str(a["member"])] = bool(a["verdict"]) if "verdict" in a else a["kind"] == 1
        r.status = t.status.name if t.status not in (TaskStatus.VOTING, TaskStatus.OPENING) \
            else t.status.name.lower()
        for e in v.events("ClientRefunded", from_block=from_block, task_id=r.task_id):
            r.refunded_wei = int(e.args["charge"])
    obs.slashes = [{"task_id": int(e.args["task_id"]),
                    "stage_operator": str(e.args["stage_operator"]), "owner": str(e.args["owner"]),
                    "amount": int(e.args["amount"]), "prover": str(e.args["prover"]),
                    "tx": e.tx_hash}
                   for e in v.events("StageSlashed", from_block=from_block)]


def wait_payouts(chain: Any, owners: dict[str, str], obs: Observed, from_block: int,
                 timeout_s: float) -> None:
    """Wait (bounded) until some batch is released, then note each pipeline owner's credit."""
    deadline = time.monotonic() + timeout_s
    while True:
        obs.released = sorted({int(e.args["batch_id"])
                               for e in chain.payments.events("BatchReleased", from_block=from_block)})
        if obs.released or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    obs.earned = {op: chain.payments.balance_of(owner) for op, owner in owners.items()}


def stake_of(chain: Any, owner_addresses: dict[str, str]) -> dict[str, int]:
    return {op: chain.node_registry.node(owner).stake_wei for op, owner in owner_addresses.items()}


def run_demo(opts: DemoOptions, say: Callable[[str], None]) -> tuple[Observed, Network]:
    """Bring the network up and run the scenario. On success the caller reports and stops the
    `Network`; on any error this function stops it before raising."""
    import openai

    from contracts.client import Chain

    obs = Observed()
    t0 = time.monotonic()
    say("== veriplex up: devnet, explorer, coordinator + gateway, workers")
    net = bring_up(opts.up, say)
    obs.timings["up_s"] = time.monotonic() - t0
    try:
        say("\nVeriplex is up:\n" + net.summary())
        chain = Chain.connect(net.rpc_url, net.manifest)
        start_block = chain.block_number()
        heal = obs.heal
        heal.epoch_before = chain.scheduler.epoch()
        heal.epoch_rows_before = epoch_rows(chain, heal.epoch_before)
        obs.perturbed = [w.address for w in net.workers if w.perturbed]
        owners = {w.address: json.loads(net.cli("node", "status", w.owner, "--json"))["owner"]
                  for w in net.workers if w.role == "pipeline"}
        obs.stake_before = stake_of(chain, owners)

        say("\n== A client: wallet, 5 ETH from a dev account, 1 ETH deposit, an API key")
        token = client_setup(net)
        say(f"   API key for gateway {net.gateway_address}: {token[:14]}… ({len(token)} chars)")
        api = openai.OpenAI(base_url=net.gateway_url + "/v1", api_key=token, max_retries=0,
                            timeout=120)

        say(f"\n== Paid requests with the openai client (model {net.model_name!r})")
        t1 = time.monotonic()
        sent = 0

        def send(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                stream = sent % 2 == 1
                retry_until = time.monotonic() + opts.retry_503_s
                while True:
                    try:
                        r = ask(api, net.model_name, PROMPTS[sent % len(PROMPTS)], stream,
                                opts.max_tokens)
                        break
                    except openai.APIStatusError as exc:  # 503: no pipeline while re-allocating
                        if exc.status_code != 503 or time.monotonic() > retry_until:
                            raise DemoFailed(f"request {sent + 1} through the gateway failed: "
                                             f"{exc} (see {net.data_dir / 'logs'})") from None
                        say(f"   (gateway: {exc.status_code}, no pipeline yet; retrying)")
                        time.sleep(2.0)
                    except openai.APIError as exc:
                        raise DemoFailed(f"request {sent + 1} through the gateway failed: {exc} "
                                         f"(see {net.data_dir / 'logs'})") from None
                obs.requests.append(r)
                sent += 1
                say(f"   [{r.kind:6}] {r.request_id}  {r.tokens[0]}+{r.tokens[1]} tokens, "
                    f"{r.charge_wei / 1e9:g} gwei\n            Q: {r.prompt}\n"
                    f"            A: {r.answer.strip()[:100]!r}")

        send(opts.requests)
        obs.timings["first_requests_s"] = time.monotonic() - t1
        say("\n== Settlement and verification (every request is sampled; a committee of the "
            "standby workers re-executes one stage of each)")
        deadline = time.monotonic() + opts.timeout_s
        shown: dict[str, str] = {}
        cheats = {a.lower() for a in obs.perturbed}
        while time.monotonic() < deadline:
            follow(chain, obs.requests, obs, start_block)
            for r in obs.requests:
                state = f"{r.status}:{len(r.verdicts)}"
                if shown.get(r.request_id) != state and r.task_id:
                    shown[r.request_id] = state
                    say(f"   task {r.task_id} for {r.request_id[:18]}…: stage {r.stage} "
                        f"({r.stage_operator[:10]}…) {r.status}, verdicts "
                        f"{_verdicts(r.verdicts)}")
            if obs.perturbed_slashed():  # convicted: the healing comes next
                obs.timings.setdefault("convicted_s", time.monotonic() - t1)
                break
            settled_all = all(r.status in FINAL for r in obs.requests)
            drawn = [r for r in obs.requests if r.task_id]
            if len(drawn) == len(obs.requests) and sent < opts.max_requests and cheats and \
                    all(r.stage_operator.lower() in cheats for r in drawn):
                # Every task drew the cheater's stage: ask again now, while it still serves (once
                # it is slashed no pipeline is left for a request that could pass).
                say("   every task so far checks the perturbed stage: one more request, so an "
                    "honest stage is checked too")
                send(1)
                continue
            if settled_all and sent >= opts.max_requests:
                break  # every task is over and no request is left to send
            if settled_all:
                say("   not yet both outcomes (a pass and the cheater slashed): one more request")
                send(1)
            time.sleep(1.0)
        grace = time.monotonic() + 15  # a convicted stage's client is refunded just after
        while any(r.status == "FRAUD" and not r.refunded_wei for r in obs.requests) and \
                time.monotonic() < grace:
            time.sleep(1.0)
            follow(chain, obs.requests, obs, start_block)
        obs.timings["verification_s"] = time.monotonic() - t1
        obs.stake_after = stake_of(chain, owners)
        if obs.perturbed_slashed():
            heal_network(opts, say, chain, obs, start_block, send, t1)
        say("\n== Payouts: once a batch's verification window has passed and none of its tasks is "
            "open, the gateway releases its escrow to the pipeline's owners")
        wait_payouts(chain, owners, obs, start_block, timeout_s=opts.payout_timeout_s)
        follow(chain, obs.requests, obs, start_block)  # every outcome as it stands at the end
        keeper_reverts(chain, start_block, heal)
        obs.timings["total_s"] = time.monotonic() - t0
        return obs, net
    except BaseException:
        net.stop()
        raise


def heal_network(opts: DemoOptions, say: Callable[[str], None], chain: Any, obs: Observed,
                 start_block: int, send: Callable[[int], None], t1: float) -> None:
    """Wait for the cheater's eviction in a new epoch, then send the next requests and follow
    them until one is verified PASSED on the healed pipeline (bounded)."""
    heal = obs.heal
    say("\n== Eviction: the convicted stage is jailed and slashed; the coordinator evicts it "
        "and promotes a standby worker into its layers, published as a new epoch")
    t2 = time.monotonic()
    if not wait_eviction(chain, obs.perturbed, heal, opts.eviction_timeout_s):
        say(f"   no epoch without the cheater within {opts.eviction_timeout_s:g} s")
        return
    obs.timings["wait_for_new_epoch_s"] = time.monotonic() - t2
    measure_healing(chain, obs.perturbed, heal, start_block)
    say(f"   epoch {heal.epoch_before} -> {heal.new_epoch} (block {heal.epoch_block}, "
        f"{heal.slash_to_epoch_s if heal.slash_to_epoch_s is not None else '?'} s of chain time "
        f"after the slash in block {heal.slash_block}): evicted {', '.join(heal.evicted)}; "
        f"promoted {', '.join(heal.promoted) or 'nobody (a spare was already placed)'}")
    for op, a, b in heal.new_rows:
        say(f"      layers {a}-{b}: {op}")
    say("\n== The next requests, served by the healed pipeline and verified")
    n0 = len(obs.requests)
    t3 = time.monotonic()
    send(2)
    obs.timings["first_after_eviction_s"] = time.monotonic() - t3
    extra, deadline = 0, time.monotonic() + opts.timeout_s
    while time.monotonic() < deadline:
        heal.after = obs.requests[n0:]
        follow(chain, heal.after, obs, start_block)
        if any(r.status == "PASSED" for r in heal.after):
            obs.timings["passed_after_eviction_s"] = time.monotonic() - t3
            break
        if all(r.status in FINAL for r in heal.after) and extra < 3:
            extra += 1
            say("   no pass yet among them: one more request")
            send(1)
        time.sleep(1.0)
    heal.after = obs.requests[n0:]
    for r in heal.after:
        say(f"   {r.request_id[:18]}…: task {r.task_id} stage {r.stage} "
            f"({r.stage_operator[:10]}…) {r.status}, verdicts {_verdicts(r.verdicts)}")
    obs.timings["healing_s"] = time.monotonic() - t2
    obs.timings["verification_s"] = time.monotonic() - t1


def _verdicts(v: dict[str, bool]) -> str:
    if not v:
        return "none revealed yet"
    return ", ".join(f"{m[:10]}…={'OK' if ok else 'FRAUD'}" for m, ok in v.items())


def explorer_views(net: Network, reqs: list[Request], timeout_s: float = 20.0) -> dict[str, str]:
    """What the explorer's request page says of each request's verification (its JSON twin),
    waiting for the indexer to catch up with the last outcome."""
    import httpx

    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for r in reqs:
            if seen.get(r.request_id, "").lower().startswith(r.status.lower()[:4]):
                continue
            try:
                resp = httpx.get(f"{net.explorer_url}/api/request/{r.request_id}", timeout=5)
            except httpx.HTTPError as exc:
                seen[r.request_id] = f"unreachable ({exc})"
                continue
            if resp.status_code != 200:
                seen[r.request_id] = f"not indexed yet (HTTP {resp.status_code})"
                continue
            verdict = (resp.json().get("data") or {}).get("verdict") or {}
            seen[r.request_id] = str(verdict.get("status_name") or "settled, no verdict yet")
        done = all(seen.get(r.request_id, "").lower().startswith(r.status.lower()[:4])
                   for r in reqs if r.status in FINAL)
        if done or time.monotonic() > deadline:
            return seen
        time.sleep(1.0)


def report(obs: Observed, net: Network, say: Callable[[str], None]) -> list[str]:
    """Print the outcome table; returns the list of what is missing (empty: success)."""
    say("\n== Requests (and what the explorer's page for each says)")
    views = explorer_views(net, obs.requests)
    for r in obs.requests:
        say(f"   {r.request_id}  [{r.kind}] {r.status}"
            + (f" (stage {r.stage}, verdicts {_verdicts(r.verdicts)})" if r.task_id else "")
            + (f", client refunded {r.refunded_wei / 1e9:g} gwei" if r.refunded_wei else ""))
        say(f"      explorer: {net.explorer_url}/request/{r.request_id}  "
            f"[{views.get(r.request_id, '?')}]")
    say("\n== Slashes")
    if not obs.slashes:
        say("   none")
    bad = {a.lower() for a in obs.perturbed}
    by_task: dict[int, list[dict[str, Any]]] = {}
    for s in obs.slashes:  # the contract splits a stage's slash among the accusers (provers)
        by_task.setdefault(s["task_id"], []).append(s)
    for task_id, parts in sorted(by_task.items()):
        op = parts[0]["stage_operator"]
        who = "the PERTURBED worker" if op.lower() in bad else "an honest worker"
        say(f"   task {task_id}: stage operator {op} ({who}) slashed "
            f"{sum(p['amount'] for p in parts) / 1e18:g} ETH, shared by {len(parts)} prover(s); "
            f"explorer: {net.explorer_url}/node/{op}")
    for op in obs.stake_before:
        if obs.stake_before[op] != obs.stake_after.get(op):
            say(f"   stake of {op}: {obs.stake_before[op] / 1e18:g} -> "
                f"{obs.stake_after.get(op, 0) / 1e18:g} ETH")
    heal = obs.heal
    say("\n== Eviction and the healed pipeline")
    if heal.new_epoch:
        say(f"   epoch {heal.epoch_before} -> {heal.new_epoch}: evicted "
            f"{', '.join(heal.evicted) or 'nobody'}, promoted from standby "
            f"{', '.join(heal.promoted) or 'nobody'}; explorer: {net.explorer_url}/epoch/"
            f"{heal.new_epoch}")
    else:
        say("   no new epoch without the cheater")
    for r in heal.after:
        say(f"   after the eviction: {r.request_id} {r.status}")
    say(f"   reverted keeper transactions on this chain: {len(heal.reverted)}"
        + "".join(f"\n      {x['method']} {x['tx']} (block {x['block']})" for x in heal.reverted)
        + (f" (other reverted transactions: {len(heal.reverted_other)})"
           if heal.reverted_other else ""))
    say("\n== Payouts")
    say(f"   batches released from escrow: {', '.join(map(str, obs.released)) or 'none yet'}")
    for op, credit in obs.earned.items():
        who = "PERTURBED" if op.lower() in bad else "honest"
        say(f"   pipeline operator {op} ({who}): its owner's credit {credit / 1e9:g} gwei "
            f"(`veriplex rewards claim OWNER` sends it)")
    missing = []
    if not obs.passed():
        missing.append("no request was verified PASSED")
    if not obs.perturbed_slashed():
        missing.append(f"the perturbed worker ({', '.join(obs.perturbed) or 'none started'}) "
                       f"was not slashed")
    elif not heal.new_epoch:
        missing.append("the slashed worker was not evicted in a new epoch (see "
                       "logs/coordinator.log)")
    elif not any(r.status == "PASSED" for r in heal.after):
        missing.append("no request served after the eviction was verified PASSED")
    if heal.reverted:
        missing.append(f"{len(heal.reverted)} keeper transaction(s) reverted")
    if missing:  # say where it stopped, so the log to read is obvious
        if not any(r.task_id for r in obs.requests):
            missing.append("no verification task was opened for any request (the gateway opens "
                           "them after settlement: see logs/gateway.log)")
        elif not any(r.verdicts for r in obs.requests):
            missing.append("tasks were opened but no committee member revealed a verdict (the "
                           "workers' verifier agents: see logs/worker-*.log)")
    return missing


__all__ = ["DemoFailed", "DemoOptions", "Observed", "UpError", "report", "run_demo"]
