"""The layout's import rules, read from the source (every import, lazy ones included).

Each subpackage's docstring states what it may import; this test is the same table in code.
Imports under ``if TYPE_CHECKING:`` are type hints only and do not count.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ros2_bilevel_fusion"
OWN = "ros2_bilevel_fusion"

ROS_MESSAGES = {
    "sensor_msgs", "std_msgs", "vision_msgs", "builtin_interfaces", "diagnostic_msgs",
    "rcl_interfaces", "rosgraph_msgs", "geometry_msgs",
}
ROS_CLIENT = {"rclpy", "message_filters", "ament_index_python"}
NEVER_IN_PACKAGE = {"torch", "torchvision", "training", "tensorboard"}
COMMON = {"numpy", "cv2", "yaml", "scipy"}

# subpackage -> (own subpackages it may import, third-party top-level modules it may import)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "core": ({"core"}, COMMON | {"ament_index_python"}),
    "messages": ({"core", "messages"}, COMMON | ROS_MESSAGES | {"cv_bridge"}),
    "backends": ({"core", "backends"}, COMMON | {"onnxruntime", "onnx", "tensorrt", "cuda"}),
    "node": (
        {"core", "messages", "backends", "node"},
        COMMON | ROS_MESSAGES | ROS_CLIENT,
    ),
    "bag": ({"core", "messages", "bag"}, COMMON | ROS_MESSAGES | ROS_CLIENT | {"rosbags"}),
    "evaluation": (
        {"core", "messages", "backends", "bag", "evaluation"},
        COMMON | {"skimage", "pycocotools", "matplotlib", "tqdm"},
    ),
}
# The torch backend is the one runtime module that may load torch: it runs the TorchScript file
# the export wrote. It still may not import training.
TORCH_ALLOWED = {"backends/torch_backend.py", "backends/tensorrt_backend.py"}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in the file, outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == OWN:
                found.extend((node.lineno, f"{OWN}.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def violations(path: Path) -> list[str]:
    relative = path.relative_to(PACKAGE).as_posix()
    if "/" not in relative:
        return []  # the package's own __init__ imports nothing
    subpackage = relative.split("/")[0]
    own_allowed, third_allowed = RULES[subpackage]
    if relative in TORCH_ALLOWED:
        third_allowed = third_allowed | {"torch"}
    problems = []
    for line, module in imported_modules(path):
        top = module.split(".")[0]
        if top == OWN:
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if target and target not in own_allowed:  # "": the top-level package itself
                problems.append(f"{relative}:{line} imports {module}")
        elif top in sys.stdlib_module_names or top == "__future__":
            continue
        elif top not in third_allowed:
            problems.append(f"{relative}:{line} imports {module}")
    return problems


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_subpackage_has_a_rule_and_a_docstring() -> None:
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages == set(RULES)
    for name in subpackages:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"{name}/__init__.py must say what it may import"


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_module_follows_the_import_rules(path: Path) -> None:
    assert violations(path) == []


def test_nothing_in_the_package_imports_training_or_torch_outside_the_torch_backend() -> None:
    for path in package_modules():
        relative = path.relative_to(PACKAGE).as_posix()
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            assert top not in {"training", "torchvision"}, f"{relative}:{line} imports {module}"
            if top == "torch":
                assert relative in TORCH_ALLOWED, f"{relative}:{line} imports torch"


def test_the_rule_checker_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself can fail: a core module importing rclpy and training is caught."""
    bad = PACKAGE / "core" / "_import_rule_probe.py"
    bad.write_text("import rclpy\n\ndef f():\n    from training.models import X\n")
    try:
        assert violations(bad) == [
            "core/_import_rule_probe.py:1 imports rclpy",
            "core/_import_rule_probe.py:4 imports training.models",
        ]
    finally:
        bad.unlink()


def test_training_does_not_import_itself_in_a_cycle() -> None:
    """training's modules form no import cycle (evaluation takes models, not a Trainer)."""
    training = REPO / "training"
    graph: dict[str, set[str]] = {}
    for path in training.glob("*.py"):
        name = path.stem
        graph[name] = {
            module.split(".")[1]
            for _, module in imported_modules(path)
            if module.startswith("training.") and module.split(".")[1] != name
        }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(name for name in graph if reaches(name, name, {name}))
    assert cycles == []
