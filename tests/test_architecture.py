"""The house's rules, read from the source: no import circles, nothing under `audio/` importing `handler`, torch
and qwen_tts imported at module level only behind the model boundary, and every import allowed by the `MAY_IMPORT`
of the importing module's package (`audio/**/__init__.py`)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "qwen_tts")
# The model boundary: the only modules that may import torch or qwen_tts when they are imported.
HEAVY_ALLOWED = ("audio.engine", "audio.model_loader")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in [ROOT / "handler.py", *sorted((ROOT / "audio").rglob("*.py"))]}
PACKAGES = {module_name(p) for p in (ROOT / "audio").rglob("__init__.py")}


def resolve(name: str) -> str | None:
    """The project module `name` refers to (a module, or the package of a name imported from it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports(module: str) -> tuple[tuple[str, int, bool], ...]:
    """Each import in `module`: (the imported name, its line, whether it runs when the module is imported).
    Imports inside functions and under `if TYPE_CHECKING:` count for circles and packages, not for `eager`."""
    tree = ast.parse(MODULES[module].read_text())
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, eager) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from audio import catalog` imports the module audio.catalog.
                found.extend((f"{child.module}.{alias.name}", child.lineno, eager) for alias in child.names)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            ):
                visit(child, False)
            else:
                visit(child, eager)

    visit(tree, True)
    return tuple(found)


def project_imports(module: str) -> set[str]:
    targets = {resolve(name) for name, _, _ in imports(module)}
    return {t for t in targets if t is not None and t != module}


def package_of(module: str) -> str:
    return module if module in PACKAGES else module.rpartition(".")[0]


def may_import(package: str) -> tuple[str, ...]:
    tree = ast.parse(MODULES[package].read_text())
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "MAY_IMPORT":
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{MODULES[package].relative_to(ROOT)} does not say what its package may import (MAY_IMPORT)")


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def allowed(module: str, target: str) -> bool:
    package = package_of(module)
    # A top-level module's own package is its siblings, not the subpackages.
    own = package_of(target) == "audio" if package == "audio" else within(target, package)
    return own or any(within(target, prefix) for prefix in may_import(package))


def test_there_are_no_import_circles():
    graph = {m: project_imports(m) for m in MODULES}
    circles, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the path, 2 done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif state[nxt] == 0:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if state[module] == 0:
            walk(module, [module])
    assert circles == []


def test_nothing_under_audio_imports_the_entry_point():
    offenders = [f"{m}:{line}" for m in MODULES if m != "handler" for n, line, _ in imports(m) if within(n, "handler")]
    assert offenders == []


def test_torch_and_qwen_tts_load_only_behind_the_model_boundary():
    offenders = [
        f"{m}:{line} imports {name}"
        for m in MODULES
        if not any(within(m, b) for b in HEAVY_ALLOWED)
        for name, line, eager in imports(m)
        if eager and any(within(name, h) for h in HEAVY)
    ]
    assert offenders == []


def test_every_package_says_what_it_may_import():
    assert sorted(PACKAGES) == ["audio", "audio.engine", "audio.output", "audio.serving", "audio.text", "audio.voices"]
    for package in PACKAGES:
        assert all(resolve(prefix) is not None for prefix in may_import(package)), package


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "handler"))  # the entry may import anything
def test_imports_stay_within_what_the_package_allows(module):
    refused = sorted(t for t in project_imports(module) if not allowed(module, t))
    assert refused == [], f"{module} ({package_of(module)}) imports what its package's MAY_IMPORT does not allow"


def test_the_rules_catch_what_they_forbid(tmp_path, monkeypatch):
    """The checks see a circle, an import of `handler`, a module-level torch and a refused import."""
    files = {
        "audio/text/bad.py": "import torch\nfrom audio.output import joiner\n\ndef f():\n    import handler\n",
        "audio/output/joiner.py": "from audio.text import bad\n",
    }
    for rel, src in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(src)
        monkeypatch.setitem(MODULES, rel[:-3].replace("/", "."), tmp_path / rel)
    imports.cache_clear()
    try:
        assert "audio.output.joiner" in project_imports("audio.text.bad")
        assert "audio.text.bad" in project_imports("audio.output.joiner")
        with pytest.raises(AssertionError):
            test_there_are_no_import_circles()
        with pytest.raises(AssertionError):
            test_nothing_under_audio_imports_the_entry_point()
        with pytest.raises(AssertionError):
            test_torch_and_qwen_tts_load_only_behind_the_model_boundary()
        assert not allowed("audio.text.bad", "audio.output.joiner")
        assert not allowed("audio.worker", "audio.serving.service")
        assert allowed("audio.serving.http_server", "audio.worker")
    finally:
        imports.cache_clear()
