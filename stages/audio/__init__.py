"""Dub-audio analysis: decoding, features, speech synthesis for demos and training."""
