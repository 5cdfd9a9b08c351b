"""Kernel tests: every Triton kernel against its plain-torch reference.

Without CUDA the kernels run on CPU tensors through Triton's interpreter. The interpreter must be
chosen before triton's first import in the process, so it is set up here, when pytest imports this
conftest during collection: ``kernels.interpret.load_interpreted`` sets ``TRITON_INTERPRET=1`` only
while triton and the ``kernels.triton_*`` modules import, then restores the environment, so no other
test package sees the variable. With CUDA nothing is interpreted and the GPU cases run compiled.
"""
from __future__ import annotations

import os

import pytest
import torch

import kn_helpers


def _set_up_interpreter() -> None:
    kn_helpers.TRITON_INTERPRET_BEFORE = os.environ.get("TRITON_INTERPRET")
    if torch.cuda.is_available():
        kn_helpers.INTERPRETER = (False, "CUDA is present: the kernels run compiled (see the cuda-* cases)")
        return
    from kernels.interpret import load_interpreted

    try:
        ok = load_interpreted()
    except RuntimeError as exc:  # triton was imported compiled earlier in this process
        kn_helpers.INTERPRETER = (False, f"Triton interpreter unavailable: {exc}")
        return
    kn_helpers.INTERPRETER = (True, "") if ok else (False, "triton is not installed: interpreter tests skipped "
                                                        "(the torch fallback is still tested)")


_set_up_interpreter()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device and Triton (skipped without them)")


@pytest.fixture(autouse=True)
def _one_thread():
    """The interpreter is numpy-bound; on a shared 2-core box one torch thread avoids spin contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
