"""The deployment manifest: which contracts live where on which chain.

Format (JSON, version 1):

    {"version": 1, "chain_id": 31337, "deployer": "0x...", "deploy_block": 1,
     "contracts": {"NodeRegistry": {"address": "0x...", "artifact_hash": "<sha256>", "block": 1},
                   ...},
     "params": {"min_stake_wei": ..., ...}}

Every component reads addresses from here; `manifest_is_live` tells whether a manifest still
matches a running chain (same chain id, code at every address), so a restarted devnet can skip
redeploying.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.errors import ContractsError, ManifestError

MANIFEST_VERSION = 1


# Every contract a deployment holds, in the order `contracts.deploy` deploys them.
DEPLOY_ORDER = [
    "NodeRegistry",
    "ModelRegistry",
    "Scheduler",
    "Payments",
    "BlockhashRandomness",
    "SpotCheck",
    "Committee",
    "TaskOpener",
    "Verification",
]


@dataclass(frozen=True)
class Deployment:
    address: str
    artifact_hash: str
    block: int


@dataclass(frozen=True)
class Manifest:
    chain_id: int
    deployer: str
    deploy_block: int
    contracts: dict[str, Deployment]
    params: dict[str, Any] = field(default_factory=dict)

    def address(self, name: str) -> str:
        try:
            return self.contracts[name].address
        except KeyError:
            raise ManifestError(
                f"contract {name!r} is not in the manifest (has: {', '.join(sorted(self.contracts))})"
            ) from None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "chain_id": self.chain_id,
            "deployer": self.deployer,
            "deploy_block": self.deploy_block,
            "contracts": {
                n: {"address": d.address, "artifact_hash": d.artifact_hash, "block": d.block}
                for n, d in sorted(self.contracts.items())
            },
            "params": self.params,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("version") != MANIFEST_VERSION:
            raise ManifestError(f"unsupported manifest version {data.get('version')!r}")
        try:
            return cls(
                chain_id=int(data["chain_id"]),
                deployer=str(data["deployer"]),
                deploy_block=int(data["deploy_block"]),
                contracts={
                    n: Deployment(str(d["address"]), str(d["artifact_hash"]), int(d["block"]))
                    for n, d in data["contracts"].items()
                },
                params=dict(data.get("params", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"malformed manifest: {exc!r}") from exc

    def save(self, path: Path) -> None:
        """Write atomically, so a reader never sees half a manifest."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ManifestError(
                f"no deployment manifest at {path}; deploy first (`veriplex contracts deploy`)"
            ) from None
        except OSError as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"manifest {path} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"manifest {path} is not a JSON object")
        return cls.from_json(data)


def check_live(rpc: Any, manifest: Manifest) -> None:
    """Raise ManifestError unless `manifest` matches the chain behind `rpc` (an `Rpc`)."""
    if rpc.chain_id != manifest.chain_id:
        raise ManifestError(
            f"manifest is for chain {manifest.chain_id} but the node is chain {rpc.chain_id}"
        )
    for name, dep in manifest.contracts.items():
        if not rpc.code(dep.address):
            raise ManifestError(f"no code at {name}'s address {dep.address}: stale manifest?")


def check_artifacts(manifest: Manifest) -> None:
    """Raise ManifestError unless every contract this checkout deploys is in the manifest with
    the artifact hash this checkout builds (else the bindings' ABIs would not match)."""
    from contracts.build import compile_all

    artifacts = compile_all()
    for name in DEPLOY_ORDER:
        dep = manifest.contracts.get(name)
        if dep is None:
            raise ManifestError(f"manifest has no {name}: deployed by an older checkout")
        if dep.artifact_hash != artifacts[name].hash:
            raise ManifestError(
                f"{name} in the manifest was built from other sources "
                f"({dep.artifact_hash[:12]} != {artifacts[name].hash[:12]})"
            )


def manifest_is_live(rpc_url: str, manifest_path: Path, check_code_version: bool = True) -> bool:
    """True iff the manifest exists, its chain id matches, and code exists at every address;
    with `check_code_version`, also iff it holds every contract with this checkout's artifacts
    (so a devnet redeploys after the contracts changed)."""
    from contracts.rpc import Rpc

    try:
        manifest = Manifest.load(manifest_path)
        check_live(Rpc(rpc_url), manifest)
        if check_code_version:
            check_artifacts(manifest)
    except ContractsError:
        return False
    return True
