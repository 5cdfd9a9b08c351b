"""Shared benchmark plumbing: test recordings, an in-process server, machine description, results."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def transcripts() -> list[tuple[Path, str]]:
    rows = []
    for line in (DATA / "transcripts.tsv").read_text().splitlines():
        if line.strip():
            name, ref = line.split("\t")
            rows.append((DATA / name, ref))
    return rows


def read(path: Path) -> np.ndarray:
    audio, rate = soundfile.read(path, dtype="float32")
    assert rate == 16000, path
    return audio


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), no GPU, Python {platform.python_version()}"


def today() -> str:
    return datetime.date.today().isoformat()


def start_server(**settings):
    from audio_server.app import create_app
    from audio_server.live import LiveServer
    from audio_server.models import ModelHub
    from audio_server.settings import Settings

    hub = ModelHub(Settings(**settings))
    hub.load_all()
    return LiveServer(create_app(hub.settings, hub)).start()


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))
