"""Dependencies point one way: `zoo` is the product, and the lab (train, evaluate, export, serving, benchmarks)
builds on it, never the reverse."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project_packages():
    """The project's top-level packages: the directories of the repository holding an __init__.py."""
    return {entry for entry in os.listdir(REPO) if os.path.isfile(os.path.join(REPO, entry, "__init__.py"))}


def _imported_top_level_names(path):
    """(line, top-level module) of every absolute import in the Python file `path`, at any depth of its code."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:  # a relative import stays inside zoo
            yield node.lineno, node.module.split(".")[0]


def _imports_of(package, forbidden):
    """'path:line imports module' for each import of one of `forbidden` in the package's files."""
    offending = []
    for directory, _, files in os.walk(os.path.join(REPO, package)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                offending += [
                    f"{os.path.relpath(path, REPO)}:{line} imports {module}"
                    for line, module in _imported_top_level_names(path)
                    if module in forbidden
                ]
    return offending


def test_zoo_imports_no_other_package_of_the_project():
    others = _project_packages() - {"zoo"}
    assert {"train", "evaluate", "export", "serving"} <= others
    offending = _imports_of("zoo", others)
    assert not offending, "zoo must import no other package of the project:\n" + "\n".join(offending)


def test_evaluate_imports_no_training_code():
    """Training builds on the evaluation (its quick check is `evaluate.quick_check`), never the reverse."""
    offending = _imports_of("evaluate", ("train", "benchmarks"))
    assert not offending, "evaluate must not import train or benchmarks:\n" + "\n".join(offending)
