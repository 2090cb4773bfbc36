"""The layer rule of issue 19, read from the package's AST (benchmarks/import_graph.py): no upward import, no
cycle, every module in ddpm_helpers/layers.py's table, function-level imports only for marked optional extras,
no re-exports outside __init__, and always: the core imports nothing above the foundation."""
import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ddpm_helpers"
sys.path.insert(0, str(REPO / "benchmarks"))
import import_graph as graph  # noqa: E402

from ddpm_helpers.layers import LAYERS, MAX_OPTIONAL_IMPORTS, PLANNED, TAUGHT_IN  # noqa: E402

FOUNDATION = dict(LAYERS)["foundation"]
CORE = ("schedule", "embeddings", "unet", "diffusion")   # fixed by the issue, whatever the table says


def _imports(package_dir=PACKAGE):
    return graph.read_imports(package_dir)


def test_every_module_is_in_the_table_once_and_the_table_holds_no_stranger():
    listed = [m for _, modules in LAYERS for m in modules]
    assert len(listed) == len(set(listed))
    present = {p.stem for p in PACKAGE.glob("*.py")}
    assert present - set(listed) == set(), "modules missing from ddpm_helpers/layers.py"
    assert set(listed) - present <= set(PLANNED), "the table names modules that do not exist"


def test_no_module_imports_a_higher_layer_or_a_later_module_of_its_own_layer():
    bad = graph.upward(_imports(), LAYERS, by_position=True)
    assert bad == [], "\n".join(f"{i.module}:{i.line} imports {i.target}" for i in bad)


def test_the_core_imports_nothing_above_the_foundation():
    bad = [i for m in CORE for i in _imports()[m] if i.target and i.target not in FOUNDATION + CORE]
    assert bad == [], [(i.module, i.target) for i in bad]


def test_no_import_cycle_counting_function_level_imports_too():
    assert graph.cycles(graph.edges(_imports(), top_level_only=False)) == []


def test_function_level_imports_are_marked_optional_extras_and_few():
    lazy = graph.function_level(_imports())
    unmarked = [f"{i.module}:{i.line} {i.target or i.external}" for i in lazy if not i.optional_comment]
    assert unmarked == [], "function-level imports need `# optional: why` (or belong at the top)"
    assert len(lazy) <= MAX_OPTIONAL_IMPORTS
    internal_to_lower = [i for i in lazy if i.target and i.target in FOUNDATION + CORE]
    assert internal_to_lower == [], "a lower layer's module is never heavy: import it at the top"


def test_no_reexports_outside_init():
    bad = [r for r in graph.reexports(PACKAGE, _imports()) if r[0] != "__init__"]
    assert bad == [], "take each name from the module that defines it: " + str(bad)
    noqa = [f"{p.name}:{n}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"
            for n, line in enumerate(p.read_text().splitlines(), 1) if "noqa: F401" in line]
    assert noqa == [], "an import kept only for others to take from here is a re-export"


def test_the_checks_catch_a_planted_upward_import_and_cycle(tmp_path):
    """The same checks on a copy of the package with one planted violation: schedule imports train."""
    copy = tmp_path / "ddpm_helpers"
    copy.mkdir()
    for p in PACKAGE.glob("*.py"):
        (copy / p.name).write_text(p.read_text())
    (copy / "schedule.py").write_text((copy / "schedule.py").read_text() + "\nfrom .train import train\n")
    imports = _imports(copy)
    assert [(i.module, i.target) for i in graph.upward(imports, LAYERS)] == [("schedule", "train")]
    assert graph.cycles(graph.edges(imports)) != []
    (copy / "schedule.py").write_text(
        (PACKAGE / "schedule.py").read_text() + "\ndef f():\n    import matplotlib\n")
    assert [i for i in graph.function_level(_imports(copy)) if i.module == "schedule"][-1].optional_comment is False


def _docstring_layers(text):
    """{layer: [modules]} from lines 'layer: a, b, c' of a docstring or a README table row '| layer | a, b |'."""
    out = {}
    for name, _ in LAYERS:
        m = re.search(rf"^\W*{re.escape(name)}\W*[:|]\s*(.+)$", text, re.MULTILINE | re.IGNORECASE)
        if m:
            out[name] = re.findall(r"`?([_a-z]+)`?", m.group(1).split("|")[0])
    return out


@pytest.mark.parametrize("where", ["__init__ docstring", "README module map"])
def test_init_docstring_and_readme_list_every_module_by_layer(where):
    if where == "__init__ docstring":
        text = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    else:
        readme = (REPO / "README.md").read_text()
        text = readme[readme.index("## Module map"):]
        text = text[:text.find("\n## ", 3) if "\n## " in text[3:] else None]
    found = _docstring_layers(text)
    for name, modules in LAYERS:
        assert found.get(name) is not None, f"{where} has no line for layer {name!r}"
        assert found[name] == list(modules), (where, name)


def test_core_and_lesson_aid_docstrings_open_with_their_notebooks():
    teaching = dict(LAYERS)["core"] + dict(LAYERS)["lesson aids"]
    for module in teaching:
        path = PACKAGE / f"{module}.py"
        if not path.exists():
            continue
        first = ast.get_docstring(ast.parse(path.read_text())).splitlines()[0]
        assert re.fullmatch(r"Taught in notebooks? 0\d(, 0\d)*\.", first), (module, first)
        if module in TAUGHT_IN or module not in PLANNED:
            assert re.findall(r"\b0\d\b", first) == list(TAUGHT_IN[module]), (module, first)


def test_each_notebook_names_the_modules_that_teach_it_near_its_top():
    """The reverse of the docstrings' first line: notebook N's first cell names every module TAUGHT_IN gives N."""
    import json
    for path in sorted((REPO / "notebooks").glob("0*.ipynb")):
        number = path.name[:2]
        first = "".join(json.loads(path.read_text())["cells"][0]["source"])
        line = next((ln for ln in first.splitlines() if ln.startswith("**Package code taught here**")), None)
        assert line is not None, f"{path.name}: no 'Package code taught here' line in its first cell"
        named = set(re.findall(r"`([a-z_]+)[.`]", line))
        want = {m for m, notebooks in TAUGHT_IN.items() if number in notebooks}
        assert want <= named, (path.name, sorted(want - named))
