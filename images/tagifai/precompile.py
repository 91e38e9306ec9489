"""Compile the bytecode of the library modules the tagifai steps load, and of nothing else.

Step containers live for one command and the image sets PYTHONDONTWRITEBYTECODE, so without
this every container would compile mlflow, pandas, scikit-learn, ... again: about 2.5 s of every
task. Compiling the whole virtualenv would add ~280 MB; the modules actually loaded add ~70 MB.
The bytecode is checked against nothing (unchecked-hash): the image's sources never change.
A module missing from the list only costs time, never correctness.
"""

import importlib
import importlib.util
import py_compile
import sys

# What `tagifai` imports (`tagifai serve` included), and the backends MLflow, Optuna and SQLAlchemy
# load on the way.
MODULES = [
    "evidently",
    "evidently.legacy.calculations.stattests.registry",
    "evidently.metrics",
    "evidently.tests",
    "h11",
    "imblearn.over_sampling",
    "matplotlib.backends.backend_agg",
    "matplotlib.figure",
    "mlflow",
    "mlflow.artifacts",
    "mlflow.data.pandas_dataset",
    "mlflow.models",
    "mlflow.pyfunc",
    "mlflow.pyfunc.loaders.code_model",
    "mlflow.store.artifact.artifact_repository_registry",
    "mlflow.store.artifact.http_artifact_repo",
    "mlflow.store.artifact.local_artifact_repo",
    "mlflow.store.model_registry.rest_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.store.tracking.rest_store",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.tracking",
    "nltk.stem",
    "numpy",
    "optuna",
    "optuna.storages",
    "optuna_integration.mlflow",
    "pandas",
    "prometheus_client",
    "prometheus_client.exposition",
    "psycopg2",
    "pyarrow.parquet",
    "scipy.stats",
    "skops.io",
    "sklearn.feature_extraction.text",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.model_selection",
    "sklearn.pipeline",
    "snorkel.slicing",
    "sqlalchemy.dialects.postgresql.psycopg2",
    "sqlalchemy.dialects.sqlite",
    "starlette.applications",
    "starlette.middleware",
    "starlette.requests",
    "starlette.responses",
    "starlette.routing",
    "threadpoolctl",
    "typer",
    "uvicorn",
    "uvicorn.lifespan.off",
    "uvicorn.loops.asyncio",
    "uvicorn.protocols.http.h11_impl",
]


def main() -> int:
    """Import MODULES, then compile every loaded module that lives in this environment."""
    for name in MODULES:
        importlib.import_module(name)
    compiled = 0
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None) or ""
        if path.endswith(".py") and path.startswith(sys.prefix):
            target = importlib.util.cache_from_source(path)
            py_compile.compile(path, cfile=target, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            compiled += 1
    print(f"precompiled {compiled} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
