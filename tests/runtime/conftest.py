"""Runtime tests run single-threaded: the tiny models are too small to gain from a second thread,
and on a CPU shared with other jobs OpenMP spin-waits make 2 threads several times slower."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
