"""Step-Audio 2 token2wav: the flow (tokens -> 24 kHz mel) and HiFT (mel -> 24 kHz audio), golden SPEC2 §9-§11."""
