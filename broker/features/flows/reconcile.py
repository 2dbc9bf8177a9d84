"""Statuses and addresses of Sequences and Parallels. Pure, like
:mod:`broker.controlplane.reconcile`.

A flow's reconciler adds the Channels and Subscriptions it owns
(:mod:`broker.features.flows.wiring`) to ``world.children`` (the controller creates, updates and
deletes them), then reports each owned object's Ready condition in Knative's status shape (K168,
K176): ``channelStatuses`` and ``subscriptionStatuses`` for a Sequence; ``ingressChannelStatus`` and
``branchStatuses`` for a Parallel; ``address`` = the first (Sequence) or ingress (Parallel)
channel's address. Conditions ``ChannelsReady``, ``SubscriptionsReady`` and ``Addressable`` give
``Ready``; when one is not True it carries the reason of the first owned object that is not Ready,
and a message naming that object (so "Service default/first does not exist" shows on the flow
itself).

Flow kinds are reconciled after Channels and Subscriptions, so the owned objects' statuses of
this pass are known. As destinations they resolve by name alone (their feature's address
resolvers), so a Trigger or PingSource may point at a flow before the flow is Ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from broker.controlplane.world import (
    Conditions,
    Obj,
    World,
    base_status,
    channel_url,
    owner_reference,
    ready_condition,
)
from broker.features.flows.wiring import (
    ChannelTemplate,
    channel_template,
    parallel_channel_name,
    parallel_resources,
    sequence_channel_name,
    sequence_resources,
)


def _template(obj: Obj, world: World) -> ChannelTemplate:
    default = world.default_channel
    return channel_template(obj.get("spec") or {}, default.api_version, default.kind)


def _reference(child: Mapping[str, Any]) -> dict[str, str]:
    metadata = child["metadata"]
    return {
        "apiVersion": child["apiVersion"],
        "kind": child["kind"],
        "name": metadata["name"],
        "namespace": metadata["namespace"],
    }


def _child_ready(owner: Obj, child: Mapping[str, Any], world: World) -> dict[str, str]:
    """The Ready condition of an owned object as this pass computed it (Knative's ``ready``)."""
    metadata = child["metadata"]
    group = child["apiVersion"].rpartition("/")[0]
    found = world.find((group, child["kind"], metadata["namespace"], metadata["name"]))
    what = f'{child["kind"]} "{metadata["namespace"]}/{metadata["name"]}"'
    if found is None:
        return {
            "type": "Ready",
            "status": "Unknown",
            "reason": "Creating",
            "message": f"creating {what}",
        }
    controllers = [
        ref for ref in found["metadata"].get("ownerReferences") or () if ref.get("controller")
    ]
    if not any(ref.get("uid") == owner["metadata"]["uid"] for ref in controllers):
        return {
            "type": "Ready",
            "status": "False",
            "reason": "NotOwned",
            "message": f"{what} exists and is not owned by {owner['kind']} "
            f'"{owner["metadata"]["name"]}"',
        }
    status = world.statuses.get(found["metadata"]["uid"]) or found.get("status") or {}
    ready = ready_condition(status)
    if ready is None:
        return {
            "type": "Ready",
            "status": "Unknown",
            "reason": "NoReady",
            "message": f"{what} has no Ready condition yet",
        }
    return {
        key: str(ready.get(key) or "")
        for key in ("type", "status", "reason", "message", "lastTransitionTime")
    }


def _entries(
    owner: Obj, children: list[dict[str, Any]], world: World, key: str
) -> list[dict[str, Any]]:
    """``[{key: reference, "ready": condition}]`` for ``children``, in order."""
    return [
        {key: _reference(child), "ready": _child_ready(owner, child, world)} for child in children
    ]


def _aggregate(
    conditions: Conditions, type_: str, entries: list[tuple[str, dict[str, Any]]]
) -> None:
    """``type_`` True when every entry is Ready, else the first not-Ready entry's reason."""
    for what, entry in entries:
        ready = entry["ready"]
        if ready["status"] != "True":
            status: Literal["False", "Unknown"] = (
                "False" if ready["status"] == "False" else "Unknown"
            )
            ref = next(v for k, v in entry.items() if k != "ready")
            message = ready.get("message") or "not Ready"
            conditions.set(
                type_,
                status,
                ready.get("reason") or f"{what}NotReady",
                f'{ref["kind"]} "{ref["namespace"]}/{ref["name"]}": {message}',
            )
            return
    conditions.set(type_, "True")


def _address(
    conditions: Conditions, status: dict[str, Any], url: str, first: dict[str, Any]
) -> None:
    if first["ready"]["status"] == "True":
        conditions.set("Addressable", "True")
        address = {"name": "http", "url": url}
        status["address"] = address
        status["addresses"] = [dict(address)]
    else:
        conditions.set("Addressable", "Unknown", "NotAddressable", "channel is not Ready yet")


def sequence_url(obj: Obj, world: World) -> str:
    """A Sequence's address: its first channel's (K166). Needs no status."""
    metadata = obj["metadata"]
    return channel_url(
        world.base_url, metadata["namespace"], sequence_channel_name(metadata["name"], 0)
    )


def parallel_url(obj: Obj, world: World) -> str:
    """A Parallel's address: its ingress channel's (K171). Needs no status."""
    metadata = obj["metadata"]
    return channel_url(
        world.base_url, metadata["namespace"], parallel_channel_name(metadata["name"])
    )


def reconcile_sequence(obj: Obj, world: World) -> None:
    owned = sequence_resources(obj, _template(obj, world), owner_reference(obj))
    world.children.extend(owned.all)
    channels = _entries(obj, owned.channels, world, "channel")
    subscriptions = _entries(obj, owned.subscriptions, world, "subscription")
    conditions = Conditions(obj, world.now)
    _aggregate(conditions, "ChannelsReady", [("Channel", e) for e in channels])
    _aggregate(conditions, "SubscriptionsReady", [("Subscription", e) for e in subscriptions])
    fields: dict[str, Any] = {}
    if channels:
        _address(conditions, fields, sequence_url(obj, world), channels[0])
    status = base_status(obj, conditions)
    status.update(fields)
    status["channelStatuses"] = channels
    status["subscriptionStatuses"] = subscriptions
    world.statuses[obj["metadata"]["uid"]] = status


def reconcile_parallel(obj: Obj, world: World) -> None:
    owned = parallel_resources(obj, _template(obj, world), owner_reference(obj))
    world.children.extend(owned.all)
    ingress = _entries(obj, [owned.ingress], world, "channel")[0]
    channels = _entries(obj, owned.branch_channels, world, "channel")
    filters = _entries(obj, owned.filter_subscriptions, world, "subscription")
    subscribers = _entries(obj, owned.subscriptions, world, "subscription")
    conditions = Conditions(obj, world.now)
    _aggregate(conditions, "ChannelsReady", [("Channel", e) for e in (ingress, *channels)])
    _aggregate(
        conditions,
        "SubscriptionsReady",
        [("Subscription", e) for pair in zip(filters, subscribers, strict=True) for e in pair],
    )
    fields: dict[str, Any] = {}
    _address(conditions, fields, parallel_url(obj, world), ingress)
    status = base_status(obj, conditions)
    status.update(fields)
    status["ingressChannelStatus"] = ingress
    status["branchStatuses"] = [
        {
            "filterSubscriptionStatus": filter_,
            "filterChannelStatus": channel,
            "subscriberSubscriptionStatus": subscriber,
        }
        for filter_, channel, subscriber in zip(filters, channels, subscribers, strict=True)
    ]
    world.statuses[obj["metadata"]["uid"]] = status
