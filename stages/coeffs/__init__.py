"""coeffs: driven motion coefficients per (shot, track, language) from the dub audio."""
