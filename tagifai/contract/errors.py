"""Errors the CLI turns into a one-line message and a non-zero exit code.

Exit codes: 1 for an error that may pass (MLflow or the network down: Airflow retries the task),
3 for bad input or setup (the data, a data source, a setting, a param: Airflow fails the task at
once, since a retry cannot fix it), 2 for a command line Typer refused.
"""

EXIT_ERROR = 1
EXIT_BAD_INPUT = 3


class TagifaiError(Exception):
    """A problem with input, configuration, upstream runs or services that the user can fix."""

    exit_code = EXIT_ERROR
    # The MLflow run (and its experiment) the error failed, when it failed one (`tracking.step_run` sets them).
    run_id: str | None = None
    experiment_id: str | None = None


class BadInputError(TagifaiError):
    """The input itself is wrong (data, data source, settings, params): retrying cannot help."""

    exit_code = EXIT_BAD_INPUT


class DataValidationError(BadInputError):
    """The data broke its contract; `failed` names each failed check."""

    def __init__(self, failed: list[str]) -> None:
        """Keep the failed check messages."""
        self.failed = failed
        super().__init__("validation failed: " + "; ".join(failed))
