"""The Step-Audio-TTS-3B prompt (SPEC step_audio_v1 §7) and the Step1 text tokenizer read from the download.

Voice cloning, the only form served here (a voice is a prompt recording, its transcript and its interleaved ids)::

    [1] [4] enc("system\\n" + SYS) [3]
    [4] enc("human\\n") strip(prompt_text) [3]
    [4] enc("assistant\\n") prompt_code [3]
    [4] enc("human\\n") strip(target_text) [3]
    [4] enc("assistant\\n")

``strip(s)`` is ``enc("\\n" + s)`` without the leading tokens of ``enc("\\n")``; ids 1 / 4 / 3 are literal (their
names are not known, SPEC §12). SYS is the reference's system prompt for a voice without a registered speaker
name (``sys_prompt_wo_spk`` of ``tts.py``), kept verbatim: it is the model's interface. The RAP / humming tags of
the reference switch to a second vocoder (``CosyVoice-300M-25Hz-Music``) that this service does not load; such
text is read with the ordinary prompt.

The text tokenizer is the download's ``tokenizer.json`` (HF ``tokenizers``); a sentencepiece ``tokenizer.model``
is read with ``sentencepiece`` when that package is installed. ``encode`` adds no BOS: the prompt writes id 1 itself.
"""

from __future__ import annotations

from pathlib import Path

BOS, TURN_START, TURN_END = 1, 4, 3

SYS_PROMPT_WO_SPK = (
    '作为一名卓越的声优演员，你的任务是根据文本中（）或()括号内标注的情感、语种或方言、音乐哼唱、语音调整等标签，'
    '以丰富细腻的情感和自然顺畅的语调来朗读文本。\n'
    '# 情感标签涵盖了多种情绪状态，包括但不限于：\n- "高兴1"\n- "高兴2"\n- "生气1"\n- "生气2"\n- "悲伤1"\n- "撒娇1"\n\n'
    '# 语种或方言标签包含多种语言或方言，包括但不限于：\n- "中文"\n- "英文"\n- "韩语"\n- "日语"\n- "四川话"\n- "粤语"\n'
    '- "广东话"\n\n'
    '# 音乐哼唱标签包含多种类型歌曲哼唱，包括但不限于：\n- "RAP"\n- "哼唱"\n\n'
    '# 语音调整标签，包括但不限于：\n- "慢速1"\n- "慢速2"\n- "快速1"\n- "快速2"\n\n'
    '请在朗读时，根据这些情感标签的指示，调整你的情感、语气、语调和哼唱节奏，以确保文本的情感和意义得到准确而生动的传达，'
    '如果没有()或（）括号，则根据文本语义内容自由演绎。')


class Step1TextTokenizer:
    """``encode(text) -> ids`` (no special tokens added) over the download's tokenizer file."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.path = path
        if path.suffix == ".json":
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(path))
            self._encode = lambda text: self._tok.encode(text, add_special_tokens=False).ids
        else:
            try:
                import sentencepiece
            except ImportError:
                raise RuntimeError(f"{path}: a sentencepiece tokenizer needs the `sentencepiece` package (or put the "
                                   "tokenizer.json of the same tokenizer beside it)") from None
            sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
            self._encode = lambda text: list(sp.encode(text))

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))

    def strip_encode(self, text: str) -> list[int]:
        """``enc("\\n" + text)`` without ``enc("\\n")``'s tokens in front (the reference's way to encode a turn)."""
        prefix = self.encode("\n")
        ids = self.encode("\n" + text)
        return ids[len(prefix):] if ids[:len(prefix)] == prefix else ids


def tts_prompt(text: str, tokenizer: Step1TextTokenizer, prompt_text: str, prompt_code: list[int],
               system: str = SYS_PROMPT_WO_SPK) -> list[int]:
    """The voice-cloning TTS prompt of ``text`` in the voice whose recording says ``prompt_text`` and whose
    interleaved ids are ``prompt_code`` (SPEC §5, §7). The answer starts right after the returned ids."""
    human, assistant = tokenizer.encode("human\n"), tokenizer.encode("assistant\n")
    ids = [BOS, TURN_START, *tokenizer.encode("system\n" + system), TURN_END]
    ids += [TURN_START, *human, *tokenizer.strip_encode(prompt_text), TURN_END]
    ids += [TURN_START, *assistant, *prompt_code, TURN_END]
    ids += [TURN_START, *human, *tokenizer.strip_encode(text), TURN_END]
    ids += [TURN_START, *assistant]
    return ids
