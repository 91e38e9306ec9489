"""tagifai: tag ML project descriptions; the pipeline steps behind the `tagifai` CLI."""

__version__ = "0.3.0"
