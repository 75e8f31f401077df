"""Packages import one way (leaves -> data -> models/losses -> predict -> evaluation ->
train), and the data layer stays torch-free."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def package_graph() -> dict[str, set[str]]:
    """src package (top folder or module) -> the src packages it imports."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        me = path.relative_to(SRC).parts[0].removesuffix(".py")
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "src" and len(parts) > 1 and parts[1] != me:
                graph.setdefault(me, set()).add(parts[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if not state.get(nxt) and (found := visit(nxt, stack + [nxt])):
                return found
        state[node] = 2
        return None
    for node in sorted(graph):
        if not state.get(node) and (found := visit(node, [node])):
            return found
    return None


def test_no_package_level_import_cycle():
    graph = package_graph()
    assert {"data", "predict", "train", "evaluation"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_layers_point_one_way():
    graph = package_graph()
    assert not graph.get("data", set()) & {"models", "losses", "predict", "train", "evaluation", "phantom"}
    assert "train" not in graph.get("evaluation", set()), "evaluation never imports training"
    assert not {"train", "evaluation"} & graph.get("predict", set())


def test_data_layer_is_torch_free():
    for path in (SRC / "data").rglob("*.py"):
        assert not {n for n in _imports(path) if n.split(".")[0] in ("torch", "monai", "timm")}, path
