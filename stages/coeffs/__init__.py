"""coeffs: driven motion coefficients per (shot, track, language) from the dub audio."""

from pathlib import Path

#: MouthNet's shipped weights (safetensors; model card beside them).
WEIGHTS = Path(__file__).parent / "weights" / "mouthnet.safetensors"
