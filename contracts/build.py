"""Compile the Vyper sources in `contracts/vy/` into ABI + bytecode artifacts, with a cache.

Every `*.vy` file directly in `contracts/vy/` is one deployable contract named after its stem
(interfaces live in `contracts/vy/interfaces/*.vyi`; snekmate modules resolve from site-packages).
The cache key is a SHA-256 over every source that can reach the compiler (our `.vy`/`.vyi` files
and the installed snekmate modules), the compiler version and the compiler settings; a hit returns
the JSON artifacts in `contracts/build/` without compiling. When that directory is not writable
(an installed wheel), the cache lives in the user's cache directory instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.errors import BuildError

SOURCE_DIR = Path(__file__).resolve().parent / "vy"
DEFAULT_BUILD_DIR = Path(__file__).resolve().parent / "build"
EVM_VERSION = "cancun"
OPTIMIZE = "gas"


@dataclass(frozen=True)
class Artifact:
    """One compiled contract: what deploying and calling it needs."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed creation code (constructor args are appended at deploy)
    runtime_bytecode: str  # 0x-prefixed code that ends up at the address
    hash: str  # sha256 over abi + creation code; recorded in the deployment manifest

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "abi": self.abi,
            "bytecode": self.bytecode,
            "runtime_bytecode": self.runtime_bytecode,
            "hash": self.hash,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            name=data["name"],
            abi=data["abi"],
            bytecode=data["bytecode"],
            runtime_bytecode=data["runtime_bytecode"],
            hash=data["hash"],
        )


def contract_sources(source_dir: Path = SOURCE_DIR) -> dict[str, Path]:
    """Deployable contracts: name -> path of its `.vy` file."""
    return {p.stem: p for p in sorted(source_dir.glob("*.vy"))}


def _compiler_settings(source: str = "") -> Any:
    """`OPTIMIZE` unless the source names its own level (`# pragma optimize codesize` keeps the
    largest contract under EIP-170)."""
    from vyper.compiler.settings import OptimizationLevel, Settings

    if "# pragma optimize" in source:
        return Settings(evm_version=EVM_VERSION)
    return Settings(evm_version=EVM_VERSION, optimize=OptimizationLevel.from_string(OPTIMIZE))


def _snekmate_dir() -> Path | None:
    try:
        import snekmate
    except ImportError:
        return None
    paths = list(getattr(snekmate, "__path__", []))
    return Path(paths[0]) if paths else None


def cache_key(source_dir: Path = SOURCE_DIR) -> str:
    """SHA-256 of everything that determines the artifacts."""
    import vyper

    h = hashlib.sha256()
    h.update(f"vyper={vyper.__version__};evm={EVM_VERSION};opt={OPTIMIZE}\n".encode())
    roots = [("veriplex", source_dir)]
    snek = _snekmate_dir()
    if snek is not None:
        roots.append(("snekmate", snek))
    for label, root in roots:
        files = sorted(p for p in root.rglob("*") if p.suffix in (".vy", ".vyi"))
        for path in files:
            h.update(f"{label}/{path.relative_to(root).as_posix()}\n".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def compile_source(name: str, path: Path, source_dir: Path = SOURCE_DIR) -> Artifact:
    """Compile one contract (no cache)."""
    from vyper.cli.vyper_compile import get_search_paths
    from vyper.compiler import compile_from_file_input
    from vyper.compiler.input_bundle import FilesystemInputBundle
    from vyper.exceptions import VyperException

    bundle = FilesystemInputBundle(get_search_paths([str(source_dir)]))
    try:
        file_input = bundle.load_file(path)
        out = compile_from_file_input(
            file_input,
            input_bundle=bundle,
            settings=_compiler_settings(path.read_text()),
            output_formats=["abi", "bytecode", "bytecode_runtime"],
        )
    except VyperException as exc:
        raise BuildError(f"{path.name} does not compile: {exc}") from exc
    abi = out["abi"]
    bytecode = out["bytecode"]
    digest = hashlib.sha256(
        json.dumps(abi, sort_keys=True).encode() + bytes.fromhex(bytecode.removeprefix("0x"))
    ).hexdigest()
    return Artifact(
        name=name,
        abi=abi,
        bytecode=bytecode,
        runtime_bytecode=out["bytecode_runtime"],
        hash=digest,
    )


def _writable_build_dir(preferred: Path) -> Path:
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=preferred):
            pass
        return preferred
    except OSError:
        fallback = Path.home() / ".cache" / "veriplex" / "contracts"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _load_cached(build_dir: Path, key: str, names: list[str]) -> dict[str, Artifact] | None:
    index = build_dir / "index.json"
    try:
        meta = json.loads(index.read_text())
        if meta.get("key") != key or sorted(meta.get("contracts", [])) != sorted(names):
            return None
        return {
            n: Artifact.from_json(json.loads((build_dir / f"{n}.json").read_text())) for n in names
        }
    except (OSError, ValueError, KeyError):
        return None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def compile_all(
    force: bool = False, build_dir: Path | None = None, source_dir: Path = SOURCE_DIR
) -> dict[str, Artifact]:
    """Compile every contract (or load them from the cache) -> name -> Artifact."""
    sources = contract_sources(source_dir)
    if not sources:
        raise BuildError(f"no contracts found in {source_dir}")
    key = cache_key(source_dir)
    out_dir = _writable_build_dir(build_dir or DEFAULT_BUILD_DIR)
    if not force:
        cached = _load_cached(out_dir, key, list(sources))
        if cached is not None:
            return cached
    artifacts = {name: compile_source(name, path, source_dir) for name, path in sources.items()}
    for name, art in artifacts.items():
        _atomic_write(out_dir / f"{name}.json", json.dumps(art.to_json(), indent=1))
    _atomic_write(
        out_dir / "index.json", json.dumps({"key": key, "contracts": sorted(artifacts)}, indent=1)
    )
    return artifacts


def load_artifact(name: str) -> Artifact:
    """One artifact by contract name (compiles everything on a cache miss)."""
    artifacts = compile_all()
    if name not in artifacts:
        raise BuildError(f"unknown contract {name!r}; known: {', '.join(sorted(artifacts))}")
    return artifacts[name]
