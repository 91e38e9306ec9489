"""The steps as MLflow runs: the shell around the core that reads sources, logs runs and registers models.

`steps` is the six steps, `tracking` the runs they log, `registry` the model versions and the gate's
bookkeeping, `tuning` the Optuna study, `sources` the fetch under the deployment's policy.
"""
