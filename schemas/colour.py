"""Colours as options and manifests write them: '#rrggbb' strings, or a few names."""

from __future__ import annotations

_NAMED = {"white": "#ffffff", "black": "#000000", "grey": "#808080", "gray": "#808080", "green": "#00ff00"}


def hex_to_rgb(text: str) -> tuple[int, int, int]:
    """'#rrggbb' (or 'rrggbb') -> (r, g, b) in 0..255; ValueError otherwise."""
    value = text.strip().removeprefix("#")
    if len(value) != 6:
        raise ValueError(f"colour {text!r} is not #rrggbb")
    return int(value[:2], 16), int(value[2:4], 16), int(value[4:], 16)


def parse_colour(text: str) -> tuple[int, int, int]:
    """A colour option: '#rrggbb' or one of white, black, grey/gray, green -> (r, g, b)."""
    return hex_to_rgb(_NAMED.get(text.strip().lower(), text))


def rgb_to_hex(rgb: tuple[int, int, int]) -> str:
    """(r, g, b) in 0..255 -> '#rrggbb'."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)
