"""prefect.yaml: the one list of deployments, for a work pool (`prefect deploy --all`) and for flows.serve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from flows.deployments import load_deployments
from flows.serve import runner_deployment
from loopline.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_declares_the_four_flows_on_the_process_pool_with_one_training_at_a_time() -> None:
    specs = load_deployments(REPO)
    assert list(specs) == ["monitoring", "training", "tuning", "scoring"]
    for name, spec in specs.items():
        assert spec.load_flow().name == name and spec.work_pool == "loopline"
    assert specs["monitoring"].crons == ("0 * * * *",) and specs["training"].crons == ("0 3 * * 1",)
    assert specs["tuning"].crons == () and specs["scoring"].crons == ()
    training = specs["training"]
    assert (training.concurrency_limit, training.collision_strategy) == (1, "ENQUEUE")  # a second trigger waits
    assert specs["monitoring"].collision_strategy == "CANCEL_NEW"  # a redundant check is recorded, cancelled


def test_the_one_process_option_serves_the_same_deployments_and_limits() -> None:
    spec = load_deployments(REPO)["training"]
    deployment = runner_deployment(spec, spec.crons)
    assert deployment.name == "training" and deployment.concurrency_limit == 1
    assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]
    assert runner_deployment(spec, ()).schedules == []  # --no-schedules


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"entrypoint": "flows.training:training"}, "deployments[1]: entrypoint 'flows.training:training' must read"),
        ({"concurrency_limit": {"limit": 0}}, "deployments[1].concurrency_limit: the limit must be a whole number"),
        ({"concurrency_limit": {"limit": 1, "collision_strategy": "QUEUE"}}, "collision_strategy must be one of"),
        ({"schedules": [{"interval": 3600}]}, "deployments[1].schedules[0]: only cron schedules are used here"),
        ({"schedules": [{"cron": "0 3 * * 1", "timezone": "Europe/Paris"}]}, "schedules are in UTC"),
        ({"name": "monitoring"}, "deployments[1]: a second deployment named 'monitoring'"),
    ],
)
def test_a_wrong_deployment_is_refused_naming_the_entry_and_the_field(
    tmp_path: Path, change: dict, message: str
) -> None:
    document = yaml.safe_load((REPO / "prefect.yaml").read_text())
    document["deployments"][1].update(change)
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_deployments(tmp_path)
