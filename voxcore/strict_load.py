"""Strict, low-memory loading of an official checkpoint file into a module tree built here.

Every model port (the Step-Audio LLM, its audio encoder, S3 tokenizers, flow, HiFT) loads through
:func:`load_strict`, so a user's checkpoint and the golden test files go through the same code:

1. build the module inside :func:`empty_parameters` — on the meta device, so no random fp32 copy of a
   7B model is ever allocated (derived buffers are recomputed by the module's ``derive_buffers``);
2. compare the file's names and shapes with the module's (headers only, no tensor data read) and raise
   one :class:`CheckpointError` naming every missing, unexpected and mis-shaped tensor;
3. read tensors one at a time, cast each to the target dtype on the target device and assign it, so the
   peak is about the model's size in the target dtype plus one tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

Source = Mapping[str, torch.Tensor] | Sequence[str | Path] | str | Path


class CheckpointError(ValueError):
    """A checkpoint that does not match the model it is loaded into (names, shapes or files)."""


@contextmanager
def empty_parameters() -> Iterator[None]:
    """Build modules inside this block: every tensor they create lives on the meta device (no memory).

    A module whose buffers are derived tables (rotary angles, windows) computes them in a method
    ``derive_buffers(self)`` called from its ``__init__``; :func:`load_strict` calls it again after
    loading, on the target device, for every module left holding a meta buffer.
    """
    with torch.device("meta"):
        yield


def _files(source: Sequence[str | Path] | str | Path) -> list[Path]:
    files = [Path(source)] if isinstance(source, (str, Path)) else [Path(f) for f in source]
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"checkpoint file not found: {f}")
    return files


def _pt_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # a pickle that is not a plain state dict, or a truncated file
        raise CheckpointError(f"{path}: not a readable torch state dict ({exc})") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: holds a {type(sd).__name__}, expected a dict of tensors")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


class _Reader:
    """Names and shapes of a source first (headers only for safetensors), tensors on demand."""

    def __init__(self, source: Source, where: str) -> None:
        self.where = where
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._owner: dict[str, Path | None] = {}
        self._mapping: dict[str, torch.Tensor] = {}
        if isinstance(source, Mapping):
            self._mapping = dict(source)
            for name, t in self._mapping.items():
                self._add(name, tuple(t.shape), None)
            return
        for f in _files(source):
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as fh:
                    for name in fh.keys():
                        self._add(name, tuple(fh.get_slice(name).get_shape()), f)
            else:
                for name, t in _pt_tensors(f).items():
                    self._mapping[name] = t
                    self._add(name, tuple(t.shape), None)

    def _add(self, name: str, shape: tuple[int, ...], owner: Path | None) -> None:
        if name in self.shapes:
            raise CheckpointError(f"{self.where}: tensor {name!r} appears in more than one file")
        self.shapes[name] = shape
        self._owner[name] = owner

    def items(self, names: Mapping[str, str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(module key, tensor) for file key -> module key in ``names``, one file open at a time."""
        by_file: dict[Path | None, list[str]] = {}
        for file_key in names:
            by_file.setdefault(self._owner[file_key], []).append(file_key)
        for owner, keys in by_file.items():
            if owner is None:
                for k in keys:
                    yield names[k], self._mapping[k]
                continue
            with safe_open(str(owner), framework="pt") as fh:
                for k in keys:
                    yield names[k], fh.get_tensor(k)


def _expected(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}


def _listing(kind: str, names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit]) + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")
    return f"{kind} ({len(names)}): {shown}"


def check_names(module: nn.Module, shapes: Mapping[str, tuple[int, ...]], where: str,
                rename: Callable[[str], str | None] | None = None) -> dict[str, str]:
    """File key -> module key for every tensor, or one CheckpointError listing every mismatch.

    ``rename(file_key)`` maps an official name to ours; ``None`` drops that tensor on purpose (e.g. a
    buffer the reference stores that we derive)."""
    expected = _expected(module)
    names: dict[str, str] = {}
    for file_key in shapes:
        key = rename(file_key) if rename else file_key
        if key is not None:
            names[file_key] = key
    found = {v: k for k, v in names.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(k for k, v in names.items() if v not in expected)
    bad = sorted(f"{found[k]}: file {shapes[found[k]]} vs model {expected[k]}"
                 for k in set(expected) & set(found) if shapes[found[k]] != expected[k])
    problems = [_listing(kind, items) for kind, items in
                (("missing tensors", missing), ("unexpected tensors", unexpected), ("mis-shaped tensors", bad))
                if items]
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not match {type(module).__name__}: " + "; ".join(problems))
    return names


def _assign(module: nn.Module, key: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


def load_strict(module: nn.Module, source: Source, *, dtype: torch.dtype | None = None,
                device: str | torch.device = "cpu", where: str | None = None,
                rename: Callable[[str], str | None] | None = None) -> nn.Module:
    """Load ``source`` (safetensors/.pt file(s) or a name -> tensor mapping) into ``module`` strictly.

    Floating tensors are cast to ``dtype`` (kept as stored when None); integer tensors keep theirs.
    Buffers the file does not hold (derived tables) are moved to ``device``. Returns the module in eval
    mode; nothing of it remains on the meta device.
    """
    where = where or (str(source) if isinstance(source, (str, Path)) else type(module).__name__)
    reader = _Reader(source, where)
    names = check_names(module, reader.shapes, where, rename)
    with torch.no_grad():
        for key, tensor in reader.items(names):
            target = dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype
            _assign(module, key, tensor.to(device=device, dtype=target))
    for sub in module.modules():
        on_meta = any(b is not None and b.device.type == "meta" for b in sub._buffers.values())
        if on_meta and hasattr(sub, "derive_buffers"):
            with torch.device(device):
                sub.derive_buffers()
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.device.type != "meta":
                sub._buffers[name] = buf.to(device)
    left = [f"{n}.{b}" for n, sub in module.named_modules() for b, v in sub._buffers.items()
            if v is not None and v.device.type == "meta"]
    left += [k for k, v in module.state_dict(keep_vars=True).items() if v.device.type == "meta"]
    if left:
        raise CheckpointError(f"{where}: left on the meta device: {', '.join(left[:8])}")
    return module.eval()
