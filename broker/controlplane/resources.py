"""The resource model in one import: kinds, the catalog type, and the shared admission helpers.

A resource is a plain dict in Kubernetes shape (``apiVersion``, ``kind``, ``metadata``, ``spec``,
``status``). The parts live in their own modules; this one gathers the names most callers want:

- :mod:`broker.controlplane.catalog`: :class:`ResourceType`, :class:`Admission`, :class:`Catalog`
  (the kinds served, built from the feature list in :mod:`broker.server.features`) and the name
  rules;
- :mod:`broker.controlplane.admission`: :func:`~broker.controlplane.admission.admit` and the checks
  every kind shares;
- :mod:`broker.controlplane.eventing.types` and :mod:`broker.controlplane.eventing.kinds`: Broker,
  Trigger, Channel (and implementations), Subscription, Secret, ConfigMap: their resource types, and
  their admission.

Importing it loads neither the store (SQLAlchemy) nor the HTTP client, and no feature: what is
served is decided by the explicit feature list, never by what happened to be imported.
"""

from broker.controlplane.admission import (
    DEFAULT_NAMESPACE,
    MAX_RESOURCE_DEPTH,
    admit_delivery,
    admit_destination,
    admit_reference,
    check_depth,
    check_http_url,
    check_process_text,
    metadata_of,
    parse_url,
)
from broker.controlplane.catalog import (
    Admission,
    Admitter,
    Catalog,
    KindReconciler,
    ResourceType,
    check_label_name,
    check_subdomain_name,
)
from broker.controlplane.eventing.kinds import EVENTING_KINDS, trigger_broker
from broker.controlplane.eventing.types import (
    BROKER,
    BROKER_CLASS_ANNOTATION,
    BROKER_LABEL,
    CEMESH_MESSAGING,
    CHANNEL,
    CHANNEL_BUSES,
    CHANNEL_IMPLEMENTATIONS,
    CONFIG_MAP,
    DEFAULT_BROKER_CLASS,
    DEFAULT_CHANNEL_TEMPLATE,
    DELIVERY_ORDER_ANNOTATION,
    DEPENDENCY_ANNOTATION,
    EVENTING,
    IN_MEMORY_CHANNEL,
    KAFKA_CHANNEL,
    MESSAGING,
    NATS_CHANNEL,
    PUBSUB_CHANNEL,
    REDIS_CHANNEL,
    SECRET,
    SUBSCRIPTION,
    TRIGGER,
    channel_type,
)

__all__ = [
    "BROKER",
    "BROKER_CLASS_ANNOTATION",
    "BROKER_LABEL",
    "CEMESH_MESSAGING",
    "CHANNEL",
    "CHANNEL_BUSES",
    "CHANNEL_IMPLEMENTATIONS",
    "CONFIG_MAP",
    "DEFAULT_BROKER_CLASS",
    "DEFAULT_CHANNEL_TEMPLATE",
    "DEFAULT_NAMESPACE",
    "DELIVERY_ORDER_ANNOTATION",
    "DEPENDENCY_ANNOTATION",
    "EVENTING",
    "EVENTING_KINDS",
    "IN_MEMORY_CHANNEL",
    "KAFKA_CHANNEL",
    "MAX_RESOURCE_DEPTH",
    "MESSAGING",
    "NATS_CHANNEL",
    "PUBSUB_CHANNEL",
    "REDIS_CHANNEL",
    "SECRET",
    "SUBSCRIPTION",
    "TRIGGER",
    "Admission",
    "Admitter",
    "Catalog",
    "KindReconciler",
    "ResourceType",
    "admit_delivery",
    "admit_destination",
    "admit_reference",
    "channel_type",
    "check_depth",
    "check_http_url",
    "check_label_name",
    "check_process_text",
    "check_subdomain_name",
    "metadata_of",
    "parse_url",
    "trigger_broker",
]
