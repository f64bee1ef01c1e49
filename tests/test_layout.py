"""The layout is the architecture: each folder of demo/ is one part, and imports flow one way between parts."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "demo"
COMMAND_LINES = {"demo.__main__", "demo.quantize"}  # on top of everything: nothing imports them
# Each part and the parts it may import (demo/__init__.py draws the same picture).
MAY_IMPORT = {
    "errors": set(),
    "settings": set(),
    "measuring": {"settings", "errors"},
    "reports": {"settings", "errors"},
    "config": {"measuring", "errors"},
    "artifacts": {"config", "measuring", "settings", "errors"},
    "backends": {"artifacts", "config", "measuring", "settings", "errors"},
    "running": {"backends", "artifacts", "config", "measuring", "settings", "errors"},
    "blind": {"running", "artifacts", "config", "measuring", "reports", "settings", "errors"},
    # demo/evaluate/: the evaluation (python -m demo.evaluate), which the Evaluate tab runs too
    "evaluate": {"running", "backends", "artifacts", "config", "measuring", "reports", "settings", "errors"},
    # demo/flips.py: answers that change against the baseline over a prompt set (python -m demo.flips), beside evaluate
    "flips": {"running", "backends", "artifacts", "config", "measuring", "reports", "settings", "errors"},
    "ui": {"evaluate", "flips", "blind", "running", "backends", "artifacts", "config", "measuring", "reports",
           "settings", "errors"},
    "cli": {"ui", "evaluate", "flips", "blind", "running", "backends", "artifacts", "config", "measuring", "reports",
            "settings", "errors"},
}


def part_of(module: str) -> str | None:
    """demo.running.runner -> running, demo.evaluate -> evaluate, the command lines -> cli; the package: None."""
    if module in COMMAND_LINES:
        return "cli"
    if module == "demo":
        return None
    return module.split(".")[1]


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imported_modules(path: Path) -> set[str]:
    """Every demo module a file imports, at any depth (imports for type checkers only left out)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "demo":
            found.add(node.module)
            folder = PACKAGE.parent / node.module.replace(".", "/")
            found.update(f"{node.module}.{a.name}" for a in node.names if (folder / f"{a.name}.py").exists())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "demo")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def part_edges() -> dict[tuple[str, str], list[str]]:
    """(importing part, imported part) -> the files that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = part_of(module_name(path))
        for target in {part_of(m) for m in imported_modules(path)} - {None, source}:
            if source is not None:
                edges.setdefault((source, target), []).append(str(path.relative_to(PACKAGE.parent)))
    return edges


def test_every_module_belongs_to_a_known_part():
    unknown = {part_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - set(MAY_IMPORT) - {None}
    assert not unknown, f"folders or modules with no place in the architecture: {sorted(unknown)}"


def test_imports_flow_one_way_between_the_parts():
    wrong = {f"{a} -> {b}": files for (a, b), files in part_edges().items() if b not in MAY_IMPORT[a]}
    assert not wrong, f"imports against the direction in demo/__init__.py: {wrong}"


def test_the_allowed_imports_have_no_cycle():
    finished = set()

    def visit(part: str, path: list[str]) -> None:
        assert part not in path, f"cycle: {' -> '.join([*path, part])}"
        if part in finished:
            return
        for target in MAY_IMPORT[part]:
            visit(target, [*path, part])
        finished.add(part)

    for part in MAY_IMPORT:
        visit(part, [])


def _imports_gradio(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if any(name.split(".")[0] == "gradio" for name in names):
            return True
    return False


def test_only_the_page_imports_gradio():
    importers = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if _imports_gradio(p)}
    assert importers and all(path.startswith("demo/ui/") for path in importers), importers
