"""Count the shape of ddpm_helpers' imports from its AST: modules, cycles, function-level imports, upward imports,
re-exports and core lines (issue 19). Reads files only; imports nothing of the package.

    python benchmarks/import_graph.py [PACKAGE_DIR]

The layer table is ddpm_helpers/layers.py's LAYERS when that file exists (it is read with ast, not imported);
otherwise the table of issue 19 (for counting older commits). tests/test_layers.py uses the same functions.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "ddpm_helpers"
ISSUE_19_TABLE = (   # the starting table of issue 19, for commits without layers.py
    ("foundation", ("errors", "_types", "files", "env", "config", "images")),
    ("core", ("schedule", "embeddings", "unet", "diffusion", "optim")),
    ("lesson aids", ("stats", "anatomy", "oracle", "plotting")),
    ("data", ("celeba", "cache", "data")),
    ("training", ("runtime", "runfolder", "checkpoint", "state", "train")),
    ("using a model", ("fast_sampling", "generate", "swd", "evaluate")),
    ("entry points", ("figures", "notebook_setup", "session", "kaggle", "cli", "__main__", "__init__")),
)
CORE_MODULES = ("schedule", "embeddings", "unet", "diffusion")   # the teaching core as issue 19 counted it


@dataclass(frozen=True)
class Import:
    """One import statement's reference to a module of the package (target '' for external imports)."""
    module: str              # the importing module
    target: str              # the package module imported ('' when external)
    names: tuple             # names taken from it (from-imports), () for `import x`
    line: int
    in_function: bool
    type_checking: bool
    external: str            # the external top-level module ('' when internal)
    optional_comment: bool   # the line carries '# optional:'


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(node, module_names: set) -> list:
    """(target module, names, external root) for one Import/ImportFrom node."""
    out = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == PACKAGE:
                out.append((parts[1] if len(parts) > 1 else "__init__", (), ""))
            else:
                out.append(("", (), parts[0]))
        return out
    names = tuple(a.name for a in node.names)
    if node.level == 0 and not (node.module or "").startswith(PACKAGE):
        return [("", names, (node.module or "").split(".")[0])]
    mod = node.module or ""
    if node.level == 0:
        mod = mod[len(PACKAGE) + 1:] if mod != PACKAGE else ""
    if mod:
        return [(mod.split(".")[0], names, "")]
    # `from . import x, y`: each name a submodule (or a name of __init__)
    return [(n if n in module_names else "__init__", (), "") for n in names]


def read_imports(package_dir: Path) -> dict:
    """{module: [Import, ...]} for every .py file of the package."""
    files = sorted(package_dir.glob("*.py"))
    module_names = {f.stem for f in files}
    result = {}
    for f in files:
        source = f.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        found = []

        def visit(node, in_function, type_checking):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    line = lines[child.lineno - 1] + "".join(lines[child.lineno:child.end_lineno])
                    for target, names, external in _targets(child, module_names):
                        found.append(Import(f.stem, target, names, child.lineno, in_function, type_checking,
                                            external, "# optional:" in line))
                    continue
                fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                tc = type_checking or (isinstance(child, ast.If) and _is_type_checking(child))
                visit(child, fn, tc)

        visit(tree, False, False)
        result[f.stem] = found
    return result


def read_layers(package_dir: Path) -> tuple:
    """LAYERS from layers.py (read with ast), else issue 19's table."""
    path = package_dir / "layers.py"
    if not path.exists():
        return ISSUE_19_TABLE
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "LAYERS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{path} defines no LAYERS")


def ranks(layers: tuple) -> dict:
    """{module: (layer index, position in the table)}."""
    out, position = {}, 0
    for i, (_, modules) in enumerate(layers):
        for m in modules:
            out[m] = (i, position)
            position += 1
    return out


def edges(imports: dict, top_level_only: bool = True) -> set:
    """Package-internal (importer, imported) pairs, TYPE_CHECKING blocks left out."""
    return {(i.module, i.target) for found in imports.values() for i in found
            if i.target and i.target != i.module and not i.type_checking and not (top_level_only and i.in_function)}


def cycles(graph_edges: set) -> list:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph = {}
    for a, b in graph_edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def upward(imports: dict, layers: tuple, by_position: bool = False) -> list:
    """Imports (function-level ones included, TYPE_CHECKING left out) from a lower layer to a higher one, or with
    by_position to a module listed later in the table (a later module of the same layer too)."""
    rank = ranks(layers)
    k = 1 if by_position else 0
    return [i for found in imports.values() for i in found
            if i.target and i.target != i.module and not i.type_checking and i.module in rank and i.target in rank
            and rank[i.target][k] > rank[i.module][k]]


def function_level(imports: dict) -> list:
    """Import statements inside functions (one per imported module), TYPE_CHECKING blocks left out."""
    return [i for found in imports.values() for i in found if i.in_function and not i.type_checking]


def defined_names(path: Path) -> set:
    """Names a module defines at its top (def, class, assignment), not the ones it imports."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def reexports(package_dir: Path, imports: dict) -> list:
    """(importer, module, name): a name taken from a module other than __init__ that does not define it."""
    defined = {f.stem: defined_names(f) for f in package_dir.glob("*.py")}
    modules = set(defined)
    return [(i.module, i.target, n) for found in imports.values() for i in found
            if i.target and i.target != "__init__" and i.target in defined
            for n in i.names if n not in defined[i.target] and n not in modules]


def lines_of(package_dir: Path, modules) -> int:
    return sum(len((package_dir / f"{m}.py").read_text().splitlines()) for m in modules
               if (package_dir / f"{m}.py").exists())


def report(package_dir: Path) -> dict:
    imports = read_imports(package_dir)
    layers = read_layers(package_dir)
    rank = ranks(layers)
    top, every = edges(imports), edges(imports, top_level_only=False)
    lazy = function_level(imports)
    loaded_at_top = {(i.module, i.target or i.external) for found in imports.values() for i in found
                     if not i.in_function}
    core = [m for m in dict(layers).get("core", CORE_MODULES)]
    return {
        "modules": len(imports),
        "modules missing from the table": sorted(set(imports) - set(rank)),
        "cycles (top-level imports)": cycles(top),
        "cycles (all imports)": cycles(every),
        "function-level imports": len(lazy),
        "  of them package-internal": sum(bool(i.target) for i in lazy),
        "  of them matplotlib": sum(i.external == "matplotlib" for i in lazy),
        "  of them re-importing what the module loads at its top":
            sum((i.module, i.target or i.external) in loaded_at_top for i in lazy),
        "  of them marked '# optional:'": sum(i.optional_comment for i in lazy),
        "upward imports (to a higher layer)": len(upward(imports, layers)),
        "imports of a module listed later in the table": len(upward(imports, layers, by_position=True)),
        "re-exports outside __init__": len([r for r in reexports(package_dir, imports) if r[0] != "__init__"]),
        "package lines": lines_of(package_dir, imports),
        f"core lines ({', '.join(CORE_MODULES)})": lines_of(package_dir, CORE_MODULES),
        f"core layer lines ({', '.join(core)})": lines_of(package_dir, core),
    }


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    package_dir = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / PACKAGE
    for key, value in report(package_dir).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
