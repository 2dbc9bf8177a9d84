"""The Channels and Subscriptions a Sequence or Parallel owns, as Knative wires them. Pure.

Names, references and replies follow Knative's ``pkg/reconciler/{sequence,parallel}/resources``:

Sequence ``s`` with steps 0..n-1 (K165-K167):
  - Channel ``s-kn-sequence-i`` per step, of the ``channelTemplate`` kind with its ``spec``;
  - Subscription ``s-kn-sequence-i``: channel i -> step i's Destination; reply to channel i+1,
    the last step's reply to ``spec.reply`` (none: the result is dropped); the step's
    ``delivery`` (retry, backoff, dead-letter sink) is that Subscription's ``delivery``.

Parallel ``p`` with branches 0..n-1 (K171-K174):
  - ingress Channel ``p-kn-parallel`` and a Channel ``p-kn-parallel-i`` per branch;
  - filter Subscription ``p-kn-parallel-filter-i`` on the ingress channel: subscriber = the
    branch's ``filter``, reply = branch channel i. A branch without a filter goes straight to its
    channel: Knative leaves the subscriber out and sets only the reply; cemesh Subscriptions
    require a subscriber, so the branch channel is the subscriber (same effect, no reply hop);
  - subscriber Subscription ``p-kn-parallel-i`` on branch channel i: subscriber = the branch's
    ``subscriber``, reply = the branch's ``reply`` else ``spec.reply``, ``delivery`` = the branch's.

Every object carries the flow's controller ownerReference (passed in, so this module needs
nothing from the reconciler). Knative sets no labels on these objects; neither does cemesh.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.controlplane.resources import SUBSCRIPTION

Obj = Mapping[str, Any]


def sequence_channel_name(sequence: str, step: int) -> str:
    return f"{sequence}-kn-sequence-{step}"


def sequence_subscription_name(sequence: str, step: int) -> str:
    return f"{sequence}-kn-sequence-{step}"


def parallel_channel_name(parallel: str) -> str:
    return f"{parallel}-kn-parallel"


def parallel_branch_channel_name(parallel: str, branch: int) -> str:
    return f"{parallel}-kn-parallel-{branch}"


def parallel_filter_subscription_name(parallel: str, branch: int) -> str:
    return f"{parallel}-kn-parallel-filter-{branch}"


def parallel_subscription_name(parallel: str, branch: int) -> str:
    return f"{parallel}-kn-parallel-{branch}"


@dataclass(frozen=True, slots=True)
class ChannelTemplate:
    """The channel kind (and spec) every channel of a flow is made of."""

    api_version: str
    kind: str
    spec: Mapping[str, Any] = field(default_factory=dict)

    def reference(self, name: str, namespace: str) -> dict[str, str]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": name,
            "namespace": namespace,
        }


def channel_template(spec: Obj, default_api_version: str, default_kind: str) -> ChannelTemplate:
    """``spec.channelTemplate``, or the default channel kind when it is left out."""
    template = spec.get("channelTemplate")
    if not isinstance(template, Mapping) or not template.get("kind"):
        return ChannelTemplate(default_api_version, default_kind)
    return ChannelTemplate(
        str(template.get("apiVersion", "")), str(template["kind"]), template.get("spec") or {}
    )


def _destination(value: Obj) -> dict[str, Any]:
    """A Destination's ``ref`` and ``uri`` only (what Knative copies onto the Subscription)."""
    return {key: copy.deepcopy(value[key]) for key in ("ref", "uri") if value.get(key) is not None}


@dataclass(frozen=True, slots=True)
class FlowResources:
    """The objects one flow owns, in the order its status lists them."""

    channels: list[dict[str, Any]]
    subscriptions: list[dict[str, Any]]

    @property
    def all(self) -> list[dict[str, Any]]:
        return [*self.channels, *self.subscriptions]


class _Builder:
    def __init__(self, obj: Obj, template: ChannelTemplate, owner: Mapping[str, Any]) -> None:
        self.namespace = str(obj["metadata"]["namespace"])
        self.template = template
        self.owner = dict(owner)

    def _metadata(self, name: str) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "ownerReferences": [dict(self.owner)]}

    def channel(self, name: str) -> dict[str, Any]:
        return {
            "apiVersion": self.template.api_version,
            "kind": self.template.kind,
            "metadata": self._metadata(name),
            "spec": copy.deepcopy(dict(self.template.spec)),
        }

    def channel_destination(self, name: str) -> dict[str, Any]:
        return {"ref": self.template.reference(name, self.namespace)}

    def subscription(
        self,
        name: str,
        channel: str,
        subscriber: Obj,
        reply: Obj | None = None,
        delivery: Obj | None = None,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            # Knative's Subscription.spec.channel is an ObjectReference without a namespace.
            "channel": {
                "apiVersion": self.template.api_version,
                "kind": self.template.kind,
                "name": channel,
            },
            "subscriber": _destination(subscriber),
        }
        if reply is not None:
            spec["reply"] = _destination(reply)
        if delivery is not None:
            spec["delivery"] = copy.deepcopy(dict(delivery))
        return {
            "apiVersion": SUBSCRIPTION.api_version,
            "kind": SUBSCRIPTION.kind,
            "metadata": self._metadata(name),
            "spec": spec,
        }


def sequence_resources(
    obj: Obj, template: ChannelTemplate, owner: Mapping[str, Any]
) -> FlowResources:
    """The Channels and Subscriptions of Sequence ``obj``, one of each per step (K165, K167)."""
    build = _Builder(obj, template, owner)
    name = str(obj["metadata"]["name"])
    spec = obj.get("spec") or {}
    steps = list(spec.get("steps") or [])
    channels = [build.channel(sequence_channel_name(name, i)) for i in range(len(steps))]
    subscriptions = []
    for i, step in enumerate(steps):
        if i < len(steps) - 1:
            reply: Obj | None = build.channel_destination(sequence_channel_name(name, i + 1))
        else:
            reply = spec.get("reply")
        subscriptions.append(
            build.subscription(
                sequence_subscription_name(name, i),
                sequence_channel_name(name, i),
                step,
                reply,
                step.get("delivery"),
            )
        )
    return FlowResources(channels, subscriptions)


@dataclass(frozen=True, slots=True)
class ParallelResources:
    """The objects one Parallel owns: ingress channel, then per branch its three objects."""

    ingress: dict[str, Any]
    branch_channels: list[dict[str, Any]]
    filter_subscriptions: list[dict[str, Any]]
    subscriptions: list[dict[str, Any]]

    @property
    def all(self) -> list[dict[str, Any]]:
        return [
            self.ingress,
            *self.branch_channels,
            *self.filter_subscriptions,
            *self.subscriptions,
        ]


def parallel_resources(
    obj: Obj, template: ChannelTemplate, owner: Mapping[str, Any]
) -> ParallelResources:
    """The Channels and Subscriptions of Parallel ``obj`` (K171-K174)."""
    build = _Builder(obj, template, owner)
    name = str(obj["metadata"]["name"])
    spec = obj.get("spec") or {}
    branches = list(spec.get("branches") or [])
    ingress = parallel_channel_name(name)
    branch_channels, filters, subscriptions = [], [], []
    for i, branch in enumerate(branches):
        channel = parallel_branch_channel_name(name, i)
        branch_channels.append(build.channel(channel))
        into_branch = build.channel_destination(channel)
        if branch.get("filter") is not None:
            filter_subscription = build.subscription(
                parallel_filter_subscription_name(name, i), ingress, branch["filter"], into_branch
            )
        else:  # no filter: every event enters the branch (see the module docstring)
            filter_subscription = build.subscription(
                parallel_filter_subscription_name(name, i), ingress, into_branch
            )
        filters.append(filter_subscription)
        reply = branch.get("reply") if branch.get("reply") is not None else spec.get("reply")
        subscriptions.append(
            build.subscription(
                parallel_subscription_name(name, i),
                channel,
                branch["subscriber"],
                reply,
                branch.get("delivery"),
            )
        )
    return ParallelResources(build.channel(ingress), branch_channels, filters, subscriptions)
