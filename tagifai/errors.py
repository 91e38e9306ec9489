"""Errors the CLI turns into a one-line message and a non-zero exit."""


class TagifaiError(Exception):
    """A problem with input, configuration or upstream runs that the user can fix."""


class DataValidationError(TagifaiError):
    """The data broke its contract; `failed` names each failed check."""

    def __init__(self, failed: list[str]) -> None:
        """Keep the failed check messages."""
        self.failed = failed
        super().__init__("validation failed: " + "; ".join(failed))
