"""The autoscaling annotation table: every row checks its value and answers to its legacy name."""

from __future__ import annotations

import pytest

from broker.core.errors import InvalidResource
from broker.features.serving.scaling_config import ANNOTATION_PREFIX, AutoscalerDefaults
from broker.features.serving.scaling_policy import ANNOTATIONS, Annotation, policy_from_annotations

FIELD = "spec.template.metadata.annotations"
# A value each annotation accepts, differing from the default where it can.
VALID = {
    "class": "kpa.autoscaling.knative.dev",
    "metric": "rps",
    "metric-aggregation-algorithm": "linear",
    "target": "20",
    "target-utilization-percentage": "50",
    "target-burst-capacity": "-1",
    "window": "2m",
    "panic-window-percentage": "20",
    "panic-threshold-percentage": "300",
    "scale-down-delay": "30s",
    "scale-to-zero-pod-retention-period": "1m",
    "min-scale": "2",
    "max-scale": "7",
    "initial-scale": "3",
    "activation-scale": "2",
}


def resolve(annotations: dict[str, str]) -> object:
    return policy_from_annotations(
        annotations, container_concurrency=0, defaults=AutoscalerDefaults()
    )


def test_the_table_has_one_row_per_annotation_name() -> None:
    names = [name for row in ANNOTATIONS for name in row.names]
    assert len(names) == len(set(names))
    assert {row.name for row in ANNOTATIONS} == set(VALID)


@pytest.mark.parametrize("row", ANNOTATIONS, ids=lambda row: row.name)
def test_every_annotation_refuses_garbage_naming_its_key(row: Annotation) -> None:
    for name in row.names:
        key = ANNOTATION_PREFIX + name
        with pytest.raises(InvalidResource) as caught:
            resolve({key: "not a value!"})
        assert caught.value.field == f"{FIELD}[{key}]"


# class and metric-aggregation-algorithm accept one value only, and it is the default.
SETTABLE = [row for row in ANNOTATIONS if row.name not in ("class", "metric-aggregation-algorithm")]


@pytest.mark.parametrize("row", SETTABLE, ids=lambda row: row.name)
def test_every_settable_annotation_changes_the_policy(row: Annotation) -> None:
    assert resolve({ANNOTATION_PREFIX + row.name: VALID[row.name]}) != resolve({})


@pytest.mark.parametrize(
    "row", [row for row in ANNOTATIONS if len(row.names) > 1], ids=lambda row: row.name
)
def test_a_legacy_name_reads_like_the_new_one_and_the_new_one_wins(row: Annotation) -> None:
    new, legacy = (ANNOTATION_PREFIX + name for name in row.names)
    assert resolve({legacy: VALID[row.name]}) == resolve({new: VALID[row.name]})
    assert resolve({new: VALID[row.name], legacy: "not a value!"}) == resolve(
        {new: VALID[row.name]}
    )


def test_max_scale_below_min_scale_is_reported_before_later_annotations() -> None:
    with pytest.raises(InvalidResource) as caught:
        resolve(
            {
                ANNOTATION_PREFIX + "min-scale": "5",
                ANNOTATION_PREFIX + "max-scale": "2",
                ANNOTATION_PREFIX + "initial-scale": "not a value!",
            }
        )
    assert caught.value.field == f"{FIELD}[{ANNOTATION_PREFIX}min-scale]"
    assert "max-scale=2 is less than min-scale=5" in caught.value.reason
