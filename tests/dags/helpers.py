"""What the DAG tests share: the runners, and the `tagifai` argv a rendered task runs."""

from __future__ import annotations

import shlex

RUNNERS = ["docker", "local", "kubernetes"]
# Every DAG in dags/, sorted.
DAG_IDS = [
    "tagifai_batch_predictions",
    "tagifai_champion",
    "tagifai_maintenance",
    "tagifai_monitor",
    "tagifai_training",
    "tagifai_watch",
]


def rendered_command(task, runner: str) -> list[str]:
    """The `tagifai` argv a rendered task runs, whatever the runner."""
    if runner == "docker":
        return ["tagifai", *task.command]
    if runner == "kubernetes":
        return ["tagifai", *task.arguments]
    return bash_argv(task.bash_command)


def bash_argv(script: str) -> list[str]:
    """The `tagifai` argv inside a local runner's bash script."""
    inner = script.split("out=$(", 1)[1].rsplit(")\n", 1)[0]
    return ["tagifai", *shlex.split(inner)[1:]]
