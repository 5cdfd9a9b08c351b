"""The packages' imports point down (DESIGN.md §2), checked on the source so a lazy import cannot hide.

`voxcore/` is the lower layer the model packages share (streaming layers, checkpoints, the audio-id layout,
MTP verifiers, the model cache); `kernels/` is below everything. The sideways imports that once joined the
model packages (vocoder -> tokenizer, tokenizer -> asr, asr -> runtime) go through `voxcore/` instead.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audio_server", "realtime", "asr", "tts", "tokenizer", "vocoder", "runtime", "bench", "voxcore",
            "kernels")

#: package -> the packages of ours it must never import, not even inside a function.
FORBIDDEN: dict[str, frozenset[str]] = {
    "vocoder": frozenset({"tokenizer"}),
    "tokenizer": frozenset({"asr"}),
    "asr": frozenset({"runtime"}),
    "voxcore": frozenset(PACKAGES) - {"voxcore", "kernels"},
    "kernels": frozenset(PACKAGES) - {"kernels"},
}

# A lazy registry entry ("runtime.presets:build_tiny") imports its module when it is looked up.
_REGISTRY_ENTRY = re.compile(r"^[A-Za-z_]\w*(\.\w+)*:[A-Za-z_]\w*$")


def imported_modules(source: str) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for every import in `source`: statements anywhere (module level, functions,
    `if TYPE_CHECKING:`), `importlib.import_module("...")` with a literal name, and registry strings."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None)
                   in ("import_module", "__import__"))):
            yield node.lineno, node.args[0].value
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _REGISTRY_ENTRY.match(node.value):
            yield node.lineno, node.value.split(":")[0]


def violations(package: str, source: str, path: str) -> list[str]:
    banned = FORBIDDEN[package]
    return [f"{path}:{line}: {package} imports {module}"
            for line, module in imported_modules(source) if module.split(".")[0] in banned]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_it_must_not(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files: was it renamed? update FORBIDDEN"
    found = [v for f in files for v in violations(package, f.read_text(), str(f.relative_to(ROOT)))]
    assert not found, "imports against the layering (DESIGN.md §2):\n" + "\n".join(found)


def test_checker_finds_lazy_imports_and_registry_strings():
    source = '''
import torch
from voxcore.streaming import StreamingConv1d


def load():
    from tokenizer.model import DualCodebookTokenizer
    import tokenizer.features as features
    return importlib.import_module("tokenizer.codebook")

REGISTRY = {"tiny": "tokenizer.model:build_tiny", "label": "not: a registry entry"}
'''
    assert {(line, module) for line, module in imported_modules(source) if module.startswith("tokenizer")} == {
        (7, "tokenizer.model"), (8, "tokenizer.features"), (9, "tokenizer.codebook"), (11, "tokenizer.model")}
    assert len(violations("vocoder", source, "vocoder/x.py")) == 4
    assert violations("tokenizer", source, "tokenizer/x.py") == []  # its own package and voxcore are fine
