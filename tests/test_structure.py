"""The layout's rules, read from the source: one import namespace, ``dubline`` (the top-level
folders are its subpackages); no stage package imports another stage's package (what stages
share lives in shared modules: ``dubline.stages.face_model``, ``dubline.stages.speech``,
``dubline.stages.media`` ...); and no two modules of dubline import each other, directly or
around a loop, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "flows", "schemas", "cluster")
#: The offline mouth-model training tool runs probe, shots and faces on real clips, as a flow
#: does; its command is recorded with the shipped weights (stages/coeffs/weights/metrics.json).
ALLOWED = {("dubline.stages.coeffs.training.real_clips", "faces"), ("dubline.stages.coeffs.training.real_clips", "probe"),
           ("dubline.stages.coeffs.training.real_clips", "shots")}


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of dubline (the repository's folders under ``dubline``)."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(("dubline", *path.relative_to(REPO).with_suffix("").parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import in ``path``, ``from a import b`` as a and a.b."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def _stage_packages() -> set[str]:
    """Folders under stages/ that hold a Stage subclass."""
    packages = set()
    for folder in (REPO / "stages").iterdir():
        for path in folder.rglob("*.py") if folder.is_dir() else ():
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if any(isinstance(n, ast.ClassDef) and any(getattr(b, "id", None) == "Stage" for b in n.bases)
                   for n in ast.walk(tree)):
                packages.add(folder.name)
    return packages


def test_the_stage_packages_are_found():
    assert {"probe", "shots", "faces", "audio", "coeffs", "render", "enhance", "composite", "report"} <= _stage_packages()
    assert not {"face_model", "speech"} & _stage_packages()


def test_no_stage_imports_another_stages_package():
    stages = _stage_packages()
    crossings = []
    for name, path in _modules().items():
        parts = name.split(".")[1:]
        if parts[0] != "stages" or len(parts) < 3 or parts[1] not in stages:
            continue
        for line, imported in _imports(path):
            bits = imported.split(".")[1:] if imported.startswith("dubline.") else []
            if (len(bits) > 1 and bits[0] == "stages" and bits[1] in stages and bits[1] != parts[1]
                    and (name, bits[1]) not in ALLOWED):
                crossings.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert crossings == []


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {i for _, i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    # A package's own __init__ importing its submodules, and they importing a sibling through the
    # package (``from dubline.stages.report import plots``), is not a loop between two modules.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_code_imports_dubline_only_through_its_namespace():
    """Importing ``stages`` or ``flows`` bare would load a second copy of a module beside the
    ``dubline.`` one (and only works from the repository's folder)."""
    roots = ("benchmarks", "tests", *PACKAGES)
    bare = [f"{path.relative_to(REPO)}:{line} imports {name}"
            for root in roots for path in (REPO / root).rglob("*.py")
            for line, name in _imports(path) if name.split(".")[0] in PACKAGES]
    assert bare == []


def test_the_installed_distribution_has_one_top_level_package():
    """From the installed distribution's own file list (its dist-info in site-packages): the
    modules it puts there, and for an editable install the names its import finder maps."""
    import re
    import site
    from importlib.metadata import distributions

    (dist,) = [d for d in distributions(path=site.getsitepackages()) if d.metadata["Name"] == "dubline"]
    files = [Path(str(f)) for f in dist.files]
    placed = {f.parts[0] for f in files if f.suffix == ".py" and f.parts[0] != "__pycache__"
              and not f.name.startswith("__editable__")}
    assert placed <= {"dubline"}, placed
    for finder in [f for f in files if f.name.startswith("__editable__") and f.suffix == ".py"]:
        mapping = re.search(r"MAPPING\b[^=]*=\s*(\{.*?\})", Path(dist.locate_file(finder)).read_text(), re.S).group(1)
        assert set(re.findall(r"'([^']+)':", mapping)) == {"dubline"}, mapping
    assert dist.read_text("top_level.txt").split() == ["dubline"]
    assert dist.entry_points.select(group="console_scripts")["dubline"].value == "dubline.flows.cli:main"


def test_every_subpackage_is_in_the_distribution():
    """pyproject.toml lists the packages one by one (the repository's root is the ``dubline``
    package): a new folder with an ``__init__.py`` must be listed, or a wheel would lack it."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"dubline"} | {".".join(("dubline", *p.parent.relative_to(REPO).parts))
                           for package in PACKAGES for p in (REPO / package).rglob("__init__.py")}
    assert listed == found


def test_the_flows_driver_does_not_import_the_stages_heavy_libraries():
    """The driver (``dubline dub``'s process) plans jobs and reads manifests, and runs the enhance
    stage when it passes through (no weights); the models run in the stages' workers
    (``Stage.setup``). PyTorch, matplotlib, librosa and scipy.interpolate cost ~3 s of every
    command's start-up when the driver imports them."""
    import subprocess
    import sys

    heavy = ("torch", "matplotlib", "librosa", "scipy.interpolate")
    code = ("import sys, dubline.flows.cli, dubline.flows.localize; "
            "from dubline.stages.enhance import EnhanceStage; EnhanceStage().setup(); "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert found == []
