"""GitHubSource's event for each kind of delivery in tests/support/github_deliveries.py.

Pure: :func:`broker.features.sources.github.to_cloudevent` gives the type
``dev.knative.source.github.<event>``, the source (the repository URL), the delivery id as
``id``, Knative's ``subject`` for the kind and exactly the extensions Knative's adapter sets,
with the payload bytes unchanged as ``application/json`` data. The same deliveries go through a
running webhook in tests/integration/test_github_deliveries.py.
"""

from __future__ import annotations

import json

import pytest

from broker.features.sources.github import event_source, to_cloudevent
from tests.support.github_deliveries import DELIVERIES, REPO, Delivery


@pytest.mark.parametrize("delivery", [pytest.param(d, id=d.name) for d in DELIVERIES])
def test_each_kind_of_delivery_becomes_knatives_event(delivery: Delivery) -> None:
    body = delivery.body
    event = to_cloudevent(delivery.event, "d-1", event_source(REPO), body, json.loads(body))

    attributes = dict(event.attributes)
    assert attributes.pop("specversion") == "1.0"
    assert attributes.pop("id") == "d-1"
    assert attributes.pop("type") == f"dev.knative.source.github.{delivery.event}"
    assert attributes.pop("source") == f"https://github.com/{REPO}"
    assert attributes.pop("datacontenttype") == "application/json"
    assert attributes.pop("subject", "") == delivery.subject
    attributes.pop("time", None)
    assert attributes == delivery.extensions
    assert event.data == body


def test_the_table_has_one_delivery_of_many_kinds() -> None:
    kinds = {d.event for d in DELIVERIES}
    assert len(kinds) >= 18, kinds
    assert {"push", "pull_request", "issues", "issue_comment", "release", "ping"} <= kinds
