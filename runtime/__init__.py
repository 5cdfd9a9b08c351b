"""voxline runtime: the unified audio LLM (Qwen2-style backbone + MTP modules) and its decoding.

Modules (importing this package loads none of them):

* :mod:`runtime.config`     — ``LMConfig`` (architecture; HF ``config.json`` names), joint text+audio ids
* :mod:`runtime.model`      — ``AudioLM``, ``build_model``
* :mod:`runtime.presets`    — ``tiny`` / ``bench`` presets, lazy registry, ``load_model(name_or_dir)``
* :mod:`runtime.checkpoint` — ``load_checkpoint`` / ``save_checkpoint``, ``load_mtp`` / ``save_mtp``
* :mod:`runtime.engine`     — ``DecodeEngine``: slots, ``reset`` / ``extend`` / ``step`` (plain or MTP)
* :mod:`runtime.generate`   — ``generate(engine, prompts, ...)``: the host loop over steps
* :mod:`runtime.sampling`, :mod:`runtime.drafter` — swappable decode parts (the verifiers are
  :mod:`voxcore.verify`, shared with the Whisper decoder)
* :mod:`runtime.train_mtp`  — ``voxline train-mtp`` (``main(argv)``): self-distillation of the MTP heads
"""
