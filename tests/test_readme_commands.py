"""The shell blocks of README.md and cluster/README.md against the code: every `dubline` command
and option they use exists, every `ray start` flag of the own-head recipe exists, every pip extra
they name is defined, the Quick start activates the venv before the bare commands that follow, and
the Quick start's demo and the commands after it run as written (the deployment block is run by
tests/test_deployments.py).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest

from tests.conftest import readme_block_after

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic, inside ray.serve

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "cluster" / "README.md"]
_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _shell_lines() -> list[tuple[str, list[str]]]:
    """(doc, tokens) of every command line of the ```bash blocks, continuation lines joined,
    comments and leading VAR=value assignments dropped."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
                if not line or line.startswith("#"):
                    continue
                tokens = [t for t in shlex.split(line.replace("…", "X")) if t not in ("[", "]", "&")]
                tokens = [t.strip("[]") for t in tokens]
                while tokens and _ASSIGNMENT.match(tokens[0]):
                    tokens.pop(0)
                if tokens:
                    found.append((doc.name, tokens))
    return found


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help", "-h"}


def test_every_dubline_command_and_option_of_the_docs_exists():
    from dubline.flows.cli import main

    checked = 0
    for doc, tokens in _shell_lines():
        if tokens[0] not in ("dubline", ".venv/bin/dubline"):
            continue
        command, words = main, tokens[1:]
        while isinstance(command, click.Group) and words and not words[0].startswith("-"):
            sub = command.get_command(click.Context(command), words[0])
            assert sub is not None, f"{doc}: `{' '.join(tokens)}`: no command {words[0]!r}"
            command, words = sub, words[1:]
        assert not isinstance(command, click.Group), f"{doc}: `{' '.join(tokens)}` names no command"
        used = {w.split("=", 1)[0] for w in words if w.startswith("-")}
        assert used <= _options(command), f"{doc}: `{' '.join(tokens)}`: unknown {sorted(used - _options(command))}"
        checked += 1
    assert checked >= 12


def test_every_ray_start_flag_of_the_docs_exists():
    from ray.scripts.scripts import start

    lines = [tokens for _, tokens in _shell_lines() if tokens[:2] == ["ray", "start"]]
    assert lines, "the own-head recipe is gone from the docs"
    for tokens in lines:
        used = {w.split("=", 1)[0] for w in tokens[2:] if w.startswith("--")}
        assert used <= _options(start), sorted(used - _options(start))


def test_every_pip_extra_the_docs_name_is_defined():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = {extra for doc in DOCS for group in re.findall(r'"\.\[([a-z0-9_,-]+)\]"', doc.read_text())
             for extra in group.split(",")}
    assert {"test", "s3", "gcs"} <= named <= extras


def test_the_quick_start_activates_the_venv_before_bare_commands():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start"):readme.index("## Using it")]
    activate = quick_start.index("source .venv/bin/activate")
    first_bare = min(quick_start.index(f"\n{cmd} ") for cmd in ("dubline", "pip", "python"))
    assert activate < first_bare


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.parent.name + "/" + p.name)
def test_object_store_examples_say_which_extra_they_need(doc):
    text = doc.read_text()
    for scheme, extra in (("s3://", '".[s3]"'), ("gs://", '".[gcs]"')):
        if scheme in text:
            assert extra in text, f"{doc.name} uses {scheme} without naming pip install -e {extra}"


@pytest.mark.timeout(1200)
def test_the_quick_start_demo_and_what_follows_it_run_as_written(quick_start):
    """A new user's first minutes, executed (the ``quick_start`` fixture): the Quick start's
    `dubline demo` and then the lines the README gives after it, as printed, in one folder."""
    readme = (ROOT / "README.md").read_text()
    assert readme_block_after(readme, "## Quick start")[-1] == "dubline demo"
    after = readme_block_after(readme, "Then, in the same folder")
    assert [line.split()[1] for line in after] == ["status", "report", "inspect", "dub"]
    folder, printed = quick_start
    demo = printed["demo"].splitlines()
    assert demo[0].startswith("1/2 avatar:") and "where to look:" in demo  # as the README shows it
    assert (folder / "dubline-demo" / "run" / "outputs" / "video" / "video.fr.mp4").exists()
    assert "video: done" in printed["status"] and "video [fr]:" in printed["report"]
    sheet = folder / printed["inspect"].strip()  # printed relative to the shell's folder
    assert sheet.name == "video.fr.png" and sheet.exists()
    import av

    with av.open(str(folder / "portrait.fr.mp4")) as dubbed:
        assert dubbed.streams.video and dubbed.streams.audio
