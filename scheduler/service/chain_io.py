"""Chain glue of the coordinator: read the registries into solver types, publish epochs.

Everything goes through the `contracts` package's typed wrappers (`Chain.node_registry`,
`.model_registry`, `.scheduler`); nothing here builds web3 calls. `read_nodes` returns the
operators that are schedulable right now (the contract's own `is_active`: registered, staked
at or above the minimum, not jailed; and not unbonding: a node on its way out is not given new
work) as `ChainNode`s; `registry_changed` tells the loop that registry events landed since a
block, so slashes, jailings and unbondings are acted on at once rather than at the next poll; `model_spec` resolves the model's full shape (the registry stores
only layers and hidden size) from a scheduler model document or a Hugging Face `config.json` and
checks it against the registry; `publish` turns a `Publication` into a `publish_epoch`
transaction signed by the coordinator key.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address

from contracts.client import Chain
from contracts.model_registry import ModelInfo
from contracts.node_registry import Hardware, NodeInfo
from contracts.scheduler import AllocationEntry
from protocol.api_errors import ModelSpecError
from scheduler.errors import InvalidInput, SchedulerError
from scheduler.model import ModelSpec, NodeSpec
from scheduler.schema import load_json, parse_model, parse_node
from scheduler.service.state import ChainNode, Publication

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
NET_UNREPORTED_MBPS = 1e6  # 1 Tbit/s: above any NIC, i.e. no cap from the node's own link
_REFUSED: dict[str, Hardware] = {}  # operator -> the unusable profile already warned about
log = logging.getLogger(__name__)


def node_spec(info: NodeInfo) -> NodeSpec:
    """The solver's view of a registered node. The NodeRegistry stores whatever profile the owner
    sent, so it is checked like a cluster document's node (`schema.parse_node`): a zero or absurd
    figure raises `InvalidInput` instead of reaching the solver."""
    hw = info.hardware
    op = to_checksum_address(info.operator)
    where = f"operator {op} hardware"
    for name in ("vram_mib", "tflops_milli", "mem_bw_gbps", "net_bw_mbps"):
        v = getattr(hw, name)
        if not 0 < v < 2**53 and not (name == "net_bw_mbps" and v == 0):
            raise InvalidInput(f"{where}.{name}: must be in (0, 2^53), got {v}")
    # net 0 = no interface reported a link speed (`veriplex node register` warns): the node's own
    # link then caps nothing and the regions' bandwidth alone applies
    net = float(hw.net_bw_mbps) if hw.net_bw_mbps else NET_UNREPORTED_MBPS
    return parse_node({"id": op, "operator": op, "region": hw.region or "unknown",
                       "vram_mib": hw.vram_mib, "tflops": hw.tflops_milli / 1000.0,
                       "mem_bw_gbps": float(hw.mem_bw_gbps), "net_mbps": net,
                       "gpu": hw.gpu}, where)


def read_nodes(chain: Chain) -> list[ChainNode]:
    """Active operators (registered, staked, not jailed) with their endpoints and hardware.

    An operator whose registered hardware profile is unusable (see `node_spec`) is left out —
    as if not active — with a warning logged once per profile, so one bad registration cannot
    stop the coordinator from planning for everyone else."""
    reg = chain.node_registry
    out = []
    for info in reg.nodes():
        if not info.registered or int(info.operator, 16) == 0:
            continue
        if not reg.is_active(info.operator) or info.unbonding_wei > 0:
            continue
        try:
            spec = node_spec(info)
        except InvalidInput as e:
            if _REFUSED.get(info.operator) != info.hardware:
                log.warning("not scheduling %s: %s", info.operator, e)
                _REFUSED[info.operator] = info.hardware
            continue
        out.append(ChainNode(operator=spec.operator, owner=info.owner, endpoint=info.endpoint,
                             spec=spec, registered_block=info.registered_block))
    return out


def registry_changed(chain: Chain, since_block: int) -> tuple[int, bool]:
    """(chain head, whether the NodeRegistry logged anything in (since_block, head])."""
    head = chain.block_number()
    if head <= since_block:
        return head, False
    return head, bool(chain.node_registry.events(None, since_block + 1, head))


def spec_from_hf_config(cfg: dict[str, Any], name: str) -> ModelSpec:
    """A `ModelSpec` from a Hugging Face causal-LM `config.json` (Llama/Qwen2/Mistral keys)."""
    try:
        heads = cfg["num_attention_heads"]
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
        doc = {"name": name, "layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"],
               "heads": heads, "kv_heads": cfg.get("num_key_value_heads") or heads,
               "intermediate": cfg["intermediate_size"], "vocab": cfg["vocab_size"],
               "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)),
               "dtype_bytes": _DTYPE_BYTES.get(dtype, 2)}
        # the same range and divisibility checks as a scheduler model document
        return parse_model(doc, f"config.json of {name!r}")
    except (KeyError, TypeError, AttributeError) as e:
        raise ModelSpecError(f"config.json of {name!r} lacks or mangles a field: {e!r}") from None
    except SchedulerError as e:
        raise ModelSpecError(str(e)) from None


def load_model_spec(info: ModelInfo, spec_file: Path | None, checkpoint_dir: Path | None,
                    models_dir: Path | None) -> ModelSpec:
    """The model's full shape, from (first found) a scheduler model document `spec_file`, the
    checkpoint's `config.json`, or `<models_dir>/<name>/config.json`; must agree with the
    registry on layers and hidden size. Carries the registry's model id."""
    try:
        if spec_file is not None:
            spec = parse_model(load_json(Path(spec_file)), str(spec_file))
        else:
            candidates = [d / "config.json" for d in (checkpoint_dir,
                          models_dir / info.name if models_dir else None) if d is not None]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise ModelSpecError(
                    f"no shape for model {info.name!r} (id {info.model_id}): the registry stores "
                    f"only layers ({info.layers}) and hidden size ({info.hidden_size}); pass "
                    f"--model-spec FILE or --checkpoint DIR (looked in: "
                    f"{', '.join(map(str, candidates)) or 'nowhere'})")
            spec = spec_from_hf_config(load_json(found), info.name)
    except (OSError, json.JSONDecodeError, SchedulerError) as e:
        raise ModelSpecError(f"cannot read the model shape: {e}") from None
    if (spec.layers, spec.hidden) != (info.layers, info.hidden_size):
        raise ModelSpecError(
            f"model shape disagrees with the ModelRegistry for {info.name!r}: layers "
            f"{spec.layers} vs {info.layers}, hidden {spec.hidden} vs {info.hidden_size}")
    return ModelSpec(**{**spec.to_dict(), "name": info.name, "model_id": info.model_id})


def resolve_model(chain: Chain, model_id: int | None) -> ModelInfo:
    """The registry's model `model_id`, or its only active model when None."""
    reg = chain.model_registry
    if model_id is not None:
        info = reg.model(model_id)
        if info is None:
            raise ModelSpecError(f"model id {model_id} is not on the ModelRegistry")
        return info
    active = [m for m in reg.models() if m.active]
    if len(active) != 1:
        names = ", ".join(f"{m.model_id}:{m.name}" for m in active) or "none"
        raise ModelSpecError(f"pass --model-id: the ModelRegistry has {len(active)} active "
                             f"models ({names})")
    return active[0]


def publish(chain: Chain, pub: Publication) -> int:
    """Send `pub` as the next epoch (signed by the chain's signer, the coordinator key);
    returns the epoch number the contract assigned."""
    entries = [AllocationEntry(model_id=m, layer_start=a, layer_end=b, operator=op)
               for op, m, a, b in pub.rows]
    return chain.scheduler.publish_epoch(entries, bytes.fromhex(pub.snapshot_hash[2:]))


def current_epoch_matching(chain: Chain, pub: Publication) -> int:
    """The chain's current epoch if it already holds exactly `pub` (same rows and snapshot
    hash, e.g. after a coordinator restart), else 0: no need to publish it again."""
    sched = chain.scheduler
    epoch = sched.epoch()
    if epoch == 0 or "0x" + sched.snapshot_hash(epoch).hex() != pub.snapshot_hash:
        return 0
    rows = sorted((to_checksum_address(e.operator), e.model_id, e.layer_start, e.layer_end)
                  for e in sched.epoch_entries(epoch))
    return epoch if tuple(rows) == tuple(sorted(pub.rows)) else 0
