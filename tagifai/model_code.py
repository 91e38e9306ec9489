"""The code MLflow runs to build a logged tagifai model ("models from code"), in place of unpickling one.

The model is empty here: `TagifaiModel.load_context` reads its fitted parts from the model's skops artifact.

A logged model is built with the code it logged (`tagifai.model.CODE`, in the `code/tagifai` folder MLflow keeps
beside this file), not with the tagifai of the process that loads it: that folder is imported as a package of its
own, named for its files' sha256 (`_tagifai_model_<12 hex>`). Versions logged with different code load side by
side in one process, loading the same code again reuses its package, and the running tagifai's modules are never
replaced in `sys.modules`, not even while the logged code is imported: serving loads the next version in a thread
while others predict. (MLflow puts `code/` first on `sys.path` as well; the running `tagifai` is imported already,
so that changes nothing of it.) Third-party packages (scikit-learn, numpy, pandas, MLflow, nltk) are the loading
process's own.

When MLflow runs this file to log a model, it runs it from the installed package (no `code/tagifai` beside it):
the model is the installed `TagifaiModel`. Versions logged before tagifai 0.3.0 (before models carried their own
code) hold a copy of this file that imports `tagifai.model`: they load with the running tagifai's code, as they
always did.
"""

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import mlflow.models

# The logged copy of tagifai's code: where MLflow puts a model's `code_paths` (its MLmodel's `code` entry).
LOGGED = Path(__file__).with_name("code") / "tagifai"
PREFIX = "_tagifai_model_"


def package_name(folder: Path) -> str:
    """The private name of the package in `folder`: `PREFIX` and the sha256 of its files and their paths (12 hex)."""
    digest = hashlib.sha256()
    for name in sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.py")):
        digest.update(name.encode() + b"\0" + hashlib.sha256((folder / name).read_bytes()).digest())
    return PREFIX + digest.hexdigest()[:12]


def import_logged(folder: Path) -> ModuleType:
    """The `model` module of the package in `folder`, imported under its private name (once per process and code).

    The package's `__init__` runs before the package is registered, so no thread sees it half made (it imports
    nothing of the package); the import system's own locks then guard `<name>.model` and what it imports.
    """
    name = package_name(folder)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        package = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(package)
        sys.modules.setdefault(name, package)  # a thread that registered the same code first wins: same files
    return importlib.import_module(f"{name}.model")


if (LOGGED / "model.py").is_file():
    TagifaiModel = import_logged(LOGGED).TagifaiModel
else:  # logging: the installed package
    from tagifai.model import TagifaiModel

mlflow.models.set_model(TagifaiModel())
