"""The package's layers, read from its imports: each layer imports only what lies below it.

contract (standard library, pydantic) < core (pure) < pipeline (MLflow) < serving, operations < cli; the Airflow
helpers (`orchestration`) and the DAGs stand beside them on the contract alone.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tagifai"
STDLIB = sys.stdlib_module_names
# What each layer may import of tagifai, and of the rest (None: anything that is not tagifai).
TAGIFAI_ALLOWED = {
    "contract": {"tagifai.contract"},
    "orchestration": {"tagifai.contract", "tagifai.orchestration"},
    "core": {"tagifai.contract", "tagifai.core", "tagifai.model"},
    "model": {"tagifai.contract", "tagifai.core.data", "tagifai.core.ngrams"},
    "model_code": {"tagifai.model"},  # what MLflow runs to build a logged model
    "pipeline": {"tagifai", "tagifai.contract", "tagifai.core", "tagifai.model", "tagifai.pipeline"},
    "serving": {"tagifai", "tagifai.contract", "tagifai.model", "tagifai.serving"},
    "operations": {"tagifai.contract", "tagifai.core", "tagifai.pipeline", "tagifai.operations"},
}
# The contract and the Airflow helpers: the standard library, and pydantic and urllib3 (Airflow requires both
# itself; the webhook notifier posts with urllib3).
OTHERS_ALLOWED = {"contract": {"pydantic"}, "orchestration": {"airflow", "kubernetes", "pydantic", "urllib3"}}
# Libraries that are I/O: the pure core never imports them.
IO_LIBRARIES = {"mlflow", "optuna", "optuna_integration", "sqlalchemy", "psycopg", "psycopg2", "urllib3", "typer"}
IO_STDLIB = {"http", "socket", "subprocess", "urllib", "os"}


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (function-level imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: resolved against the file's package
            package = path.relative_to(REPO).parent.parts
            base = ".".join(package[: len(package) - node.level + 1])
            module = f"{base}.{node.module}" if node.module else base
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def within(module: str, prefixes: set[str]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def tagifai_modules() -> set[str]:
    """The dotted names of the package's modules and packages (to tell `from tagifai.x import name` apart)."""
    names = {"tagifai"}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = tagifai_modules()
FILES = sorted(path for path in PACKAGE.rglob("*.py") if layer_of(path) in TAGIFAI_ALLOWED)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_layers_below_it(path: Path):
    layer = layer_of(path)
    wrong = []
    for module in imports(path):
        top = module.partition(".")[0]
        if top == "tagifai":
            if module in MODULES and not within(module, TAGIFAI_ALLOWED[layer]):
                wrong.append(module)
        elif top == "__future__" or top in STDLIB:
            if layer == "core" and top in IO_STDLIB:
                wrong.append(module)
        elif layer in OTHERS_ALLOWED and top not in OTHERS_ALLOWED[layer]:
            wrong.append(module)
        elif layer == "core" and top in IO_LIBRARIES:
            wrong.append(module)
    assert wrong == [], f"{path.relative_to(REPO)} ({layer}) imports {sorted(set(wrong))}"


def test_the_dags_folder_holds_dag_files_that_import_only_airflow_and_the_contract():
    dags = sorted((REPO / "dags").glob("*.py"))
    assert [p.name for p in dags] == [
        "tagifai_batch_predictions.py",
        "tagifai_champion.py",
        "tagifai_maintenance.py",
        "tagifai_monitor.py",
        "tagifai_training.py",
        "tagifai_watch.py",
    ]
    for path in dags:
        wrong = {
            module
            for module in imports(path)
            if module.partition(".")[0] not in STDLIB | {"__future__", "airflow"}
            and not within(module, {"tagifai.contract", "tagifai.orchestration"})
        }
        assert wrong == set(), f"{path.name} imports {sorted(wrong)}"


def test_nothing_in_the_package_imports_the_dags_folder():
    dag_modules = {p.stem for p in (REPO / "dags").glob("*.py")}
    for path in PACKAGE.rglob("*.py"):
        assert not {m.partition(".")[0] for m in imports(path)} & dag_modules, path
