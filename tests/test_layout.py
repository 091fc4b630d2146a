"""The package's layout: its modules import each other in one direction only (no cycle, even through an
import inside a function), so that each concept has one home below the modules that use it; and in layers
by job (LAYERS), so that, say, the data layer never reaches up into training, evaluation or run folders."""
from __future__ import annotations

import ast
from pathlib import Path

import nin

PACKAGE = Path(nin.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], *, in_functions: bool = True) -> set[str]:
    """The package's modules that ``path`` imports, at the top or (``in_functions``) inside a function."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in (ast.walk(tree) if in_functions else _run_on_import(tree)):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(part for part in (base, node.module or "") if part)
            for alias in node.names:  # `from . import checkpoint` names a module; `from .x import f` does not
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules and name != own}


def _run_on_import(tree: ast.AST):
    """The statements importing the module runs: all but the bodies of its functions (called later, if ever)."""
    for node in ast.iter_child_nodes(tree):
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _run_on_import(node)


def import_graph(*, in_functions: bool = True) -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules, in_functions=in_functions) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_graph_sees_imports_at_the_top_and_inside_functions():
    graph = import_graph()
    assert "nin.errors" in graph["nin.models"]  # from .errors import NinError
    assert "nin.checkpoint" in graph["nin.rundir"]  # from . import checkpoint as ckpt
    assert "nin.card" in graph["nin.models"]  # inside create_model's weight loading
    assert "nin.data.images" in graph["nin.data.datasets"]  # inside a function, one level down
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_imports_one_that_imports_it_back():
    assert find_cycle(import_graph()) is None


# The package's layers by job, the lowest first: a module imports from its own layer (one way only: no cycle)
# or from a lower one. A name stands for that module and, but "nin", the modules under it. Nine layers at most.
LAYERS = (
    ("files and kinds", ("nin.errors", "nin.version", "nin.kinds", "nin.files")),
    ("the machine and outside formats", ("nin.hardware", "nin.distributed", "nin.tblog", "nin.plotting",
                                         "nin.caffe")),
    ("data", ("nin.data",)),
    ("models", ("nin.layers", "nin.init", "nin.models", "nin.card")),
    ("run settings and checkpoints", ("nin.config", "nin.defaults", "nin.checkpoint")),
    ("evaluation and run folders", ("nin.evaluate", "nin.inference", "nin.report", "nin.visualize", "nin.rundir")),
    ("training", ("nin.train",)),
    ("outputs", ("nin.export", "nin.convert", "nin.reproduce")),
    ("entry points", ("nin", "nin.cli", "nin.__main__")),
)
MAX_DEPTH = 9  # modules in the longest chain of imports that importing one of them runs


def layer_of(module: str) -> int:
    """The index in LAYERS of the layer that holds ``module`` (by its longest matching name)."""
    matches = [(len(name), index) for index, (_, names) in enumerate(LAYERS) for name in names
               if module == name or (name != "nin" and module.startswith(name + "."))]
    assert matches, f"{module} is in no layer: add it to LAYERS in tests/test_layout.py, where its job puts it"
    return max(matches)[1]


def depth(graph: dict[str, set[str]]) -> tuple[int, list[str]]:
    """The number of modules in the graph's longest chain of imports, and that chain (its top first)."""
    chains: dict[str, list[str]] = {}

    def chain(module: str) -> list[str]:
        if module not in chains:
            chains[module] = [module] + max((chain(name) for name in sorted(graph[module])), key=len, default=[])
        return chains[module]

    longest = max((chain(module) for module in sorted(graph)), key=len)
    return len(longest), longest


def test_the_layering_checks_see_an_upward_import_and_count_a_chain():
    assert len(LAYERS) <= 9
    assert layer_of("nin.data.pack") == layer_of("nin.data") < layer_of("nin.rundir") < layer_of("nin.train.loop")
    assert layer_of("nin.data.preprocess") < layer_of("nin.config") and layer_of("nin.kinds") == 0
    assert layer_of("nin") == layer_of("nin.cli") and layer_of("nin.errors") == 0
    assert depth({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == (3, ["a", "b", "c"])
    assert "nin.data.datasets" in import_graph()["nin.data.pack"]
    assert "nin.data.images" not in import_graph(in_functions=False)["nin.data.datasets"]  # imported in a function


def test_every_module_imports_only_from_its_own_layer_or_below():
    upward = [f"{module} ({LAYERS[layer_of(module)][0]}) imports {name} ({LAYERS[layer_of(name)][0]})"
              for module, names in import_graph().items() for name in sorted(names)
              if layer_of(name) > layer_of(module)]
    assert upward == []


def test_the_data_layer_imports_nothing_from_training_evaluation_or_run_folders():
    data = {module: names for module, names in import_graph().items() if layer_of(module) == layer_of("nin.data")}
    above = {name for names in data.values() for name in names if layer_of(name) > layer_of("nin.data")}
    assert data and above == set()


def test_importing_any_module_runs_a_chain_of_at_most_nine_modules():
    count, chain = depth(import_graph(in_functions=False))
    assert count <= MAX_DEPTH, " -> ".join(chain)
