"""The dependency rule of documentation/architecture.md holds for every module: entry points -> stages -> shared
building blocks -> plumbing, no stage imports another, and no import cycle. Read from the source (ast), so an import
inside a function or under TYPE_CHECKING counts too."""
from __future__ import annotations

import ast
from pathlib import Path

import automedsam

PACKAGE = Path(automedsam.__file__).parent
PAGE = PACKAGE.parent / "documentation" / "architecture.md"
# Top-level name under automedsam -> layer; a stage is a folder whose modules may import each other but no other stage.
LAYERS = {
    "entry": {"cli", "api", "benchmarks", "annotation"},
    "stage": {"conversion", "planning", "training", "inference", "model_sharing"},
    "shared": {"io", "dicom", "boxes", "dataset", "foundation", "prompt_module", "losses", "plans", "samples", "folds",
               "checkpoint", "evaluation", "plotting", "box_refinement", "trained_models",
               "second_look", "box_proposal"},
    "plumbing": {"errors", "files", "paths", "device", "distributed", "parallel", "progress", "nifti_check",
                 "__init__"},
}
ORDER = ["plumbing", "shared", "stage", "entry"]  # a module imports its own layer or the ones before it


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def top_level(module: str) -> str:
    """`automedsam.training.trainer` -> `training`; the package itself -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> str:
    name = top_level(module)
    found = [layer for layer, names in LAYERS.items() if name in names]
    assert len(found) == 1, f"{module}: {name} belongs to no layer (or to several); add it to LAYERS and the docs"
    return found[0]


def imports(module: str) -> set[str]:
    """The automedsam modules `module` imports: `from a.b import c` is a.b.c when that is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "automedsam")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "automedsam":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {name for name in found if name != module}


def test_every_module_imports_only_along_the_rule():
    broken = []
    for module in MODULES:
        for imported in imports(module):
            assert imported in MODULES, f"{module} imports {imported}, which does not exist"
            source, target = layer(module), layer(imported)
            if ORDER.index(target) > ORDER.index(source):
                broken.append(f"{module} ({source}) imports {imported} ({target})")
            elif source == target == "stage" and top_level(module) != top_level(imported):
                broken.append(f"{module} imports another stage: {imported}")
    assert broken == []


def test_there_is_no_import_cycle():
    graph = {module: imports(module) for module in MODULES}
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycles.append(" -> ".join([*trail[trail.index(imported):], imported]))
            elif imported not in state:
                visit(imported, [*trail, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_architecture_page_names_every_layer_as_the_rule_test_does():
    text = PAGE.read_text()
    for names in LAYERS.values():
        for name in names - {"__init__"}:
            assert f"`{name}" in text, f"architecture.md does not place `{name}` in a layer"
