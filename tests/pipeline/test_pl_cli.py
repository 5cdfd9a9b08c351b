"""`voxline pipeline` (one turn through the session code, from a file to a file) and the settings that
select the unified pipeline for `voxline serve`."""

from __future__ import annotations

import pytest
import soundfile

from audio_server.cli import main
from audio_server.settings import Settings
from tests.pipeline.conftest import DATA


def test_cli_pipeline_writes_the_answer_and_reports_the_figures(tmp_path, capsys):
    out = tmp_path / "answer.wav"
    rc = main(["pipeline", str(DATA / "commands" / "goforward.wav"), "-o", str(out), "--max-tokens", "50",
               "--mtp", "2", "--no-warmup"])
    assert rc == 0
    audio, rate = soundfile.read(out, dtype="int16")
    assert rate == 24000 and len(audio) == 50 // 5 * 2880
    report = capsys.readouterr().out
    print(report)
    for label in ("first audio latency", "RTF", "MTP tokens per step", "answer audio tokens    50"):
        assert label in report


def test_cli_pipeline_refuses_bad_options(tmp_path, capsys):
    wav = str(DATA / "commands" / "001.wav")
    assert main(["pipeline", wav, "-o", str(tmp_path / "a.wav"), "--preset", "embedded"]) == 2
    assert main(["pipeline", wav, "-o", str(tmp_path / "a.wav"), "--max-tokens", "12"]) == 2
    assert "multiple of 5" in capsys.readouterr().err


def test_settings_select_the_unified_pipeline(monkeypatch):
    assert Settings().pipeline == "cascade"
    monkeypatch.setenv("VOXLINE_PIPELINE", "unified")
    monkeypatch.setenv("VOXLINE_PRESET", "tiny")
    assert Settings.from_env().pipeline == "unified"
    with pytest.raises(ValueError, match="tiny preset only"):
        Settings(pipeline="unified")  # the embedded preset has no unified model
    with pytest.raises(ValueError, match="unknown pipeline"):
        Settings(pipeline="end-to-end")
