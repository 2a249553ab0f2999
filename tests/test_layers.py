"""The layers stay: no module imports a module of a layer above its own."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYERS = [  # lowest first: a module may import its own layer and those below
    ("bottom", ("helper.errors", "helper.registry", "helper.util", "helper.collectives")),
    ("library", ("models", "dataset", "distiller_zoo", "crd")),
    ("engine", ("helper.engine", "helper.loops")),
    ("runs", ("helper.runs",)),
    ("plugins", ("helper.plugins",)),
    ("student", ("helper.student", "helper.recipes")),
    ("session", ("helper.session", "helper.options", "helper.naming")),
    ("tools", ("helper.tools", "helper.table", "helper.plot", "helper.evaluate", "helper.probe",
               "helper.verify_teacher", "helper.launch", "helper.analyze")),
]
# Names the peers' users import from distiller_zoo, re-exported from the plug-in that owns them.
COMPATIBILITY_REEXPORTS = {("distiller_zoo.CTKD", "helper.plugins.ctkd"), ("distiller_zoo", "helper.plugins")}


def layer(module):
    """(rank, name) of a module's layer, None outside the layers (scripts, tests, benchmarks, torch...)."""
    for rank, (name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank, name
    return None


def project_sources():
    """(module, source) of every module of the layered packages."""
    for folder in ("helper", "models", "dataset", "distiller_zoo", "crd"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path.read_text()


def imported_modules(module, source, is_package):
    """Every module `source` imports, at any depth (function-level imports included), relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)  # `from helper import session`


def upward_imports(sources):
    """'module (layer) imports target (layer)' for every import of a higher layer."""
    found = []
    for module, source in sources:
        own = layer(module)
        is_package = source is not None and module in PACKAGES
        for target in imported_modules(module, source, is_package):
            theirs = layer(target)
            if own is None or theirs is None or theirs[0] <= own[0]:
                continue
            if any(module == m and (target == t or target.startswith(t + ".")) for m, t in COMPATIBILITY_REEXPORTS):
                continue
            found.append(f"{module} ({own[1]}) imports {target} ({theirs[1]})")
    return sorted(set(found))


PACKAGES = {".".join(p.relative_to(ROOT).parts[:-1]) for p in ROOT.glob("**/__init__.py")
            if ".venv" not in p.parts}


def test_no_module_imports_a_higher_layer():
    assert upward_imports(project_sources()) == []


def test_a_planted_upward_import_is_caught():
    planted = [("helper.engine.planted", "def later():\n    from helper.session import run\n"),
               ("crd.planted", "from helper.engine import fast\n"),
               ("helper.runs.planted", "from ..student import build\n")]
    assert upward_imports(list(project_sources()) + planted) == [
        "crd.planted (library) imports helper.engine (engine)",
        "crd.planted (library) imports helper.engine.fast (engine)",
        "helper.engine.planted (engine) imports helper.session (session)",
        "helper.engine.planted (engine) imports helper.session.run (session)",
        "helper.runs.planted (runs) imports helper.student (student)",
        "helper.runs.planted (runs) imports helper.student.build (student)"]


def test_every_module_of_helper_sits_in_a_layer():
    outside = [module for module, _ in project_sources() if module != "helper" and layer(module) is None]
    assert outside == []
