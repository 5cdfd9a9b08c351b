"""Step-Audio 2 prompts (golden SPEC.md §2): chat, ASR, speech chat and base-model TTS, with their mel batch.

A message becomes string segments, each tokenized on its own and concatenated (BPE never merges across them):
``<|BOT|>{role}\\n{text}<|EOT|>``; the user role is renamed ``human``; audio content is cut in 25 s slices of the
16 kHz waveform, each written as ``<audio_start>`` + ``<audio_patch>`` × n + ``<audio_end>`` with n the slice's
adapter length (§3), and its log-mel (pad 479, voxcore.whisper_mel) joins the mel batch in prompt order, which is
the order :meth:`StepAudio2ForCausalLM.embed_prompt` fills the placeholders in (§6).

A message is a dict: ``role`` (system / user / human / assistant / tool_json_schemas / input), ``content`` (a
string, a list of items ``{"type": "text", "text"}``, ``{"type": "audio", "audio": waveform}``,
``{"type": "token", "token": [ids]}``, or None), and ``eot`` (default True; False leaves the turn open, e.g. an
assistant prefilled with ``<tts_start>``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from runtime.step_audio2.encoder import encoder_input_lengths, num_audio_tokens
from runtime.step_audio2.tokens import TOKEN_CONTENTS, TextTokenizer
from voxcore.whisper_mel import ENCODER_PAD, HOP, SAMPLE_RATE, log_mel

SLICE_SAMPLES = 25 * SAMPLE_RATE           # 400000: the reference cuts long audio in 25 s pieces
ASR_SYSTEM = "请记录下你所听到的语音内容。"     # "write down the speech you hear" (the reference's ASR system prompt)
TTS_INSTRUCTION = "以自然的语速读出下面的文字。\n"  # "read the text below at a natural pace" (base-model TTS)


@dataclass
class Prompt:
    """Prompt ids [1, L] and its audio: mels [N, n_mels, T] zero-padded, mel_lens [N] (frames - 2, the encoder's
    lengths); N may be 0 (mels is then None)."""

    ids: torch.Tensor
    mels: torch.Tensor | None
    mel_lens: torch.Tensor | None
    num_audio_tokens: list[int]


class _Builder:
    def __init__(self, tokenizer: TextTokenizer, n_mels: int) -> None:
        self.tok, self.sp, self.n_mels = tokenizer, tokenizer.special, n_mels
        self.segments: list[str | list[int]] = []
        self.mels: list[torch.Tensor] = []

    def text(self, s: str) -> None:
        self.segments.append(s)

    def tokens(self, ids: Sequence[int]) -> None:
        self.segments.append([int(i) for i in ids])

    def audio(self, wave: torch.Tensor) -> None:
        wave = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
        if wave.numel() == 0:
            raise ValueError("empty audio content")
        for start in range(0, wave.numel(), SLICE_SAMPLES):
            mel = log_mel(wave[start:start + SLICE_SAMPLES], n_mels=self.n_mels, pad=ENCODER_PAD)
            n = int(num_audio_tokens(mel.shape[-1]))
            self.mels.append(mel)
            self.tokens([self.sp.audio_start] + [self.sp.audio_patch] * n + [self.sp.audio_end])

    def build(self) -> Prompt:
        ids = torch.tensor([self.tok.encode_segments(self.segments)], dtype=torch.long)
        if not self.mels:
            return Prompt(ids, None, None, [])
        frames = [m.shape[-1] for m in self.mels]
        batch = torch.zeros(len(self.mels), self.n_mels, max(frames))
        for i, m in enumerate(self.mels):
            batch[i, :, :m.shape[-1]] = m
        lens = torch.tensor([encoder_input_lengths(f) for f in frames], dtype=torch.long)
        return Prompt(ids, batch, lens, [int(num_audio_tokens(f)) for f in frames])


def chat_prompt(messages: Sequence[dict[str, Any]], tokenizer: TextTokenizer, add_generation_prompt: bool = True,
                n_mels: int = 128) -> Prompt:
    """Messages in the instruct ("mini") chat format; ``add_generation_prompt`` appends ``<|BOT|>assistant\\n``
    unless the last message is an open (``eot: False``) assistant turn."""
    b = _Builder(tokenizer, n_mels)
    bot, eot = TOKEN_CONTENTS["bot"], TOKEN_CONTENTS["eot"]
    for msg in messages:
        role = "human" if msg["role"] == "user" else msg["role"]
        content = msg.get("content")
        if isinstance(content, list):
            b.text(f"{bot}{role}\n")
            for item in content:
                kind = item["type"]
                if kind == "text":
                    b.text(item["text"])
                elif kind == "audio":
                    b.audio(item["audio"])
                elif kind == "token":
                    b.tokens(item["token"])
                else:
                    raise ValueError(f"unknown content item type {kind!r} (text, audio or token)")
        else:
            b.text(f"{bot}{role}\n{content or ''}")
        if msg.get("eot", True):
            b.text(eot)
    last = messages[-1] if messages else None
    open_assistant = last is not None and last["role"] == "assistant" and not last.get("eot", True)
    if add_generation_prompt and not open_assistant:
        b.text(f"{bot}assistant\n")
    return b.build()


def asr_prompt(audio: torch.Tensor, tokenizer: TextTokenizer) -> Prompt:
    """Instruct-model ASR: the system prompt, the human audio, the generation prompt."""
    return chat_prompt([{"role": "system", "content": ASR_SYSTEM},
                        {"role": "human", "content": [{"type": "audio", "audio": audio}]}], tokenizer)


def speech_chat_prompt(audio: torch.Tensor, tokenizer: TextTokenizer, system: str | None = None,
                       history: Sequence[dict[str, Any]] = ()) -> Prompt:
    """Speech in, speech out: the assistant turn is prefilled with ``<tts_start>`` and left open (§2 S2ST/chat)."""
    messages = ([{"role": "system", "content": system}] if system else []) + list(history)
    messages += [{"role": "human", "content": [{"type": "audio", "audio": audio}]},
                 {"role": "assistant", "content": TOKEN_CONTENTS["tts_start"], "eot": False}]
    return chat_prompt(messages, tokenizer)


def tts_prompt(text: str, tokenizer: TextTokenizer) -> Prompt:
    """Base-model TTS (no BOT/EOT): the instruction, the text and ``<tts_start>``, as separate segments."""
    b = _Builder(tokenizer, 128)
    b.text(TTS_INSTRUCTION)
    b.text(text)
    b.tokens([tokenizer.special.tts_start])
    return b.build()


def audio_frames(samples: int) -> int:
    """Mel frames of a slice of ``samples`` samples on the encoder path: (samples + 479) // 160 (§3)."""
    return (samples + ENCODER_PAD) // HOP
