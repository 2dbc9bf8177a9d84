"""What a SinkBinding gives the workload it binds, shared by the sources and serving features.

Knative's SinkBinding (``sources.knative.dev/v1``) injects ``K_SINK`` (the resolved sink URL)
and ``K_CE_OVERRIDES`` into its subject's containers (K185). The sources feature admits and
reports SinkBindings (:mod:`broker.features.sources.container`); the serving feature injects the
environment into the replicas of the Services they bind (:mod:`broker.features.serving.reconcile`).
Both import this module, so neither feature imports the other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from broker.core.labels import label_selector_matches

SINK_BINDING_GROUP = "sources.knative.dev"
SINK_BINDING_KIND = "SinkBinding"
K_SINK = "K_SINK"
K_CE_OVERRIDES = "K_CE_OVERRIDES"


def binding_env(sink_uri: str, ce_overrides: Mapping[str, str]) -> dict[str, str]:
    """``K_SINK`` and ``K_CE_OVERRIDES`` as Knative's SinkBinding sets them (K185).

    ``K_CE_OVERRIDES`` is Go's compact ``json.Marshal`` of ``{"extensions": {...}}`` (keys
    sorted); without overrides Knative sets it to the empty string, and so does cemesh.
    """
    overrides = ""
    if ce_overrides:
        extensions = {key: ce_overrides[key] for key in sorted(ce_overrides)}
        overrides = json.dumps({"extensions": extensions}, separators=(",", ":"))
    return {K_SINK: sink_uri, K_CE_OVERRIDES: overrides}


def binds(binding: Mapping[str, Any], api_version: str, kind: str, obj: Mapping[str, Any]) -> bool:
    """Whether SinkBinding ``binding`` names ``obj`` (of ``api_version``/``kind``) as its subject.

    By name, or by a label selector (:func:`broker.core.labels.label_selector_matches`); a subject
    with an empty selector binds nothing.
    """
    subject = (binding.get("spec") or {}).get("subject") or {}
    if subject.get("kind") != kind or subject.get("apiVersion") != api_version:
        return False
    if subject.get("name"):
        return bool(subject["name"] == obj["metadata"]["name"])
    selector = subject.get("selector") or {}
    labels = obj["metadata"].get("labels") or {}
    return bool(selector) and label_selector_matches(selector, labels)
