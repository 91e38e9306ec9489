"""The tagifai_watch DAG: a look at each training data source on an interval, an asset event on change."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.dags.helpers import RUNNERS, rendered_command

pytestmark = pytest.mark.airflow


@pytest.mark.parametrize("runner", RUNNERS)
def test_the_watcher_looks_at_each_source_on_the_configured_interval(parse_dags, render, runner, tmp_path):
    override = tmp_path / "watch.toml"
    override.write_text("[watch]\ninterval_seconds = 20\n")
    bag = parse_dags(TAGIFAI_RUNNER=runner, TAGIFAI_CONFIG=str(override), TAGIFAI_PROJECTS_URL="/srv/data/projects.csv")
    dag = bag.dags["tagifai_watch"]
    assert dag.timetable.delta == timedelta(seconds=20)
    assert sorted(dag.task_ids) == ["checksum_projects", "checksum_tags", "watch_projects", "watch_tags"]
    # The source is read by the steps' runner, as elt reads it (its data folder mounted, for docker).
    checksum = render(dag.get_task("checksum_projects"))
    assert rendered_command(checksum, runner) == ["tagifai", "checksum", "/srv/data/projects.csv"]
    assert checksum.execution_timeout == timedelta(minutes=5)
    assert dag.get_task("watch_projects").upstream_task_ids == {"checksum_projects"}
    [projects] = dag.get_task("watch_projects").outlets
    assert (projects.name, projects.uri) == ("tagifai_projects", "file:///srv/data/projects.csv")
    assert dag.catchup is False and dag.max_active_runs == 1
