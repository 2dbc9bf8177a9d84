"""Admission, without HTTP: every kind's valid objects admit, and no broken one gets past with
anything but an InvalidResource naming a field (never another exception, the 500 of the API)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.core.errors import InvalidResource
from broker.server.features import CATALOG, admit
from tests.support.resource_samples import SAMPLES, mutated_resources, valid_resources

KINDS = sorted(SAMPLES)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_registered_kind_has_a_sample():
    assert sorted(t.kind for t in CATALOG.kinds) == KINDS


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_valid_objects_of_every_kind_are_admitted(kind, data):
    obj = data.draw(valid_resources(kind))
    admitted = admit(copy.deepcopy(obj), namespace="default")
    assert admitted["metadata"]["name"] == obj["metadata"]["name"]
    # Admitting what admission returned changes nothing more (an update with no change).
    assert admit(copy.deepcopy(admitted), namespace="default", old=admitted) == admitted


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_broken_objects_of_every_kind_are_refused_naming_a_field_or_admitted(kind, data):
    obj = data.draw(mutated_resources(kind))
    old = admit(copy.deepcopy(SAMPLES[kind]), namespace="default")
    for previous in (None, old):
        try:
            admit(copy.deepcopy(obj), namespace="default", old=previous)
        except InvalidResource as exc:
            assert exc.message  # names the field (or the object) and what is wrong
            assert len(exc.message) < 2000  # a huge value is not echoed back whole
