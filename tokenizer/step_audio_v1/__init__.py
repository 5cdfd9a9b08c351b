"""Step-Audio v1 tokenizer streams, ported from the reference's description (golden SPEC step_audio_v1).

- `frontend`: the Paraformer front end (Kaldi fbank -> LFR 7/6 -> CMVN), offline and chunked (SPEC §3.2).
- `paraformer`: the streaming SAN-M encoder chunk step the tokenizer runs (SPEC §3.3).
- `linguistic`: the vq02 stream, `LinguisticTokenizer` + `load_linguistic_tokenizer` (SPEC §3, 16.7 Hz, 1024 codes).

Submodules are imported on demand so importing this package stays cheap.
"""
