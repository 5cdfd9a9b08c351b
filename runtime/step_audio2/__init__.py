"""Step-Audio 2 mini port: the Qwen2 LLM with its Whisper-style audio encoder and adapter (golden SPEC.md §2-§7).

config (official nested config.json -> LMConfig + encoder sizes), encoder (encoder, adapter, length formulas),
model (StepAudio2ForCausalLM, an AudioLM with official key names; embedding replacement), tokens (special ids read
from the checkpoint's tokenizer files, text tokenizer, TA4 interleave, output parsing), prompt (chat/ASR/TTS/speech
chat builders with the mel batch), checkpoint (load_step_audio2 / save_step_audio2 in the official sharded layout).
"""
