"""GitHubSource (``sources.knative.dev/v1alpha1``): GitHub webhook deliveries as CloudEvents.

Knative's resource (eventing-github, K197-K201): ``ownerAndRepository``, ``eventTypes``,
``secretToken.secretKeyRef``, ``accessToken.secretKeyRef``, ``githubAPIURL``, ``secure``,
``sink``, ``ceOverrides``. Each source is reached at ``/sources/github/<namespace>/<name>``, the
URL shown in ``status.webhookUrl`` (configure it as the repository's webhook, content type
``application/json``, with the secret of ``secretToken``). Knative's own status field,
``webhookIDKey``, is the id of a hook its controller registers through GitHub's API; cemesh does not
register hooks (``accessToken`` is checked but not used), so it leaves that field unset.

One delivery becomes one event, as Knative's adapter makes it: ``type``
``dev.knative.source.github.<X-GitHub-Event>``, ``id`` the ``X-GitHub-Delivery``, ``source``
``https://github.com/<ownerAndRepository>``, ``subject`` and the extensions (``owner``,
``repository``, ``sender``, ``action``, ...) per event kind as Knative's
``SubjectAndExtensionsFromGitHubEvent``, ``data`` the payload bytes unchanged
(``application/json``).

Answers (Knative's where the issue does not ask otherwise): a missing or wrong
``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body with the secret, compared in constant time;
``X-Hub-Signature`` SHA-1 is accepted only when GitHub Enterprise sends no SHA-256) -> ``401``
and nothing emitted; an event kind not in ``eventTypes`` (a ``ping`` unless listed) -> ``200``,
nothing emitted; missing ``X-GitHub-Event``/``X-GitHub-Delivery`` or a body that is not a JSON
object -> ``400``; emitted -> ``202``; the sink did not take it after retries -> ``502``, so that
GitHub shows the delivery as failed and it can be redelivered.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson

from broker.controlplane.resources import check_http_url
from broker.core.asgi import Receive, Scope, Send, read_body, send_json
from broker.core.errors import DeliveryError, InvalidResource
from broker.core.events import AttributeValue, CloudEvent, new_event
from broker.features.sources.base import PrepareContext, Source, SourceKind, SourceNotReady
from broker.features.sources.kinds import GITHUB_SOURCE

WEBHOOK = "github"
EVENT_TYPE_PREFIX = "dev.knative.source.github"
EVENT_SOURCE_PREFIX = "https://github.com"
MAX_PAYLOAD_BYTES = 25 * 1024 * 1024  # GitHub caps webhook payloads at 25 MB
_INT32 = range(-(2**31), 2**31)


def event_type(github_event: str) -> str:
    """The CloudEvent type of a GitHub event name: ``dev.knative.source.github.<name>``."""
    return f"{EVENT_TYPE_PREFIX}.{github_event}"


def event_source(owner_and_repository: str) -> str:
    """The CloudEvent source of a GitHubSource's events: the repository's (or org's) URL."""
    return f"{EVENT_SOURCE_PREFIX}/{owner_and_repository}"


# --- subject and extensions per event kind (pure) ------------------------------------------------


def _dig(payload: Mapping[str, Any], path: str) -> Any:
    value: Any = payload
    for key in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _text(value: Any) -> str:
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field(path: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda payload: _text(_dig(payload, path))


def _last_path(path: str) -> Callable[[Mapping[str, Any]], str]:
    """The last path segment of a URL field (push ``compare``: ``a10867b14bb7...000000000000``)."""
    return lambda payload: _text(_dig(payload, path)).rpartition("/")[2]


def _pages(payload: Mapping[str, Any]) -> str:
    pages = payload.get("pages") or []
    return ",".join(_text(p.get("page_name")) for p in pages if isinstance(p, Mapping))


# How Knative's GitHub source computes ``subject`` for each event kind it knows; the keys are also
# the names ``spec.eventTypes`` accepts (Knative's list, plus check_run, star, workflow_run and
# workflow_job, which cemesh adds with the same kind of subject).
SUBJECTS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "check_run": _field("check_run.id"),
    "check_suite": _field("check_suite.id"),
    "commit_comment": _last_path("comment.html_url"),
    "create": _field("ref_type"),
    "delete": _field("ref_type"),
    "deployment": _field("deployment.id"),
    "deployment_status": _field("deployment.id"),
    "fork": _field("forkee.id"),
    "gollum": _pages,
    "installation": _field("installation.id"),
    "installation_repositories": _field("installation.id"),
    "integration_installation": _field("installation.id"),
    "integration_installation_repositories": _field("installation.id"),
    "issue_comment": _last_path("comment.html_url"),
    "issues": _field("issue.number"),
    "label": _field("label.name"),
    "member": _field("member.id"),
    "membership": _field("member.id"),
    "milestone": _field("milestone.number"),
    "organization": _field("action"),
    "org_block": _field("action"),
    "page_build": _field("id"),
    "ping": _field("hook_id"),
    "project_card": _field("action"),
    "project_column": _field("action"),
    "project": _field("action"),
    "public": _field("repository.id"),
    "pull_request": _field("pull_request.number"),
    "pull_request_review": _field("review.id"),
    "pull_request_review_comment": _field("comment.id"),
    "push": _last_path("compare"),
    "release": _field("release.tag_name"),
    "repository": _field("repository.id"),
    "repository_vulnerability_alert": _field("alert.id"),
    "security_advisory": _field("security_advisory.ghsa_id"),
    "star": _field("repository.id"),
    "status": _field("sha"),
    "team": _field("team.id"),
    "team_add": _field("repository.id"),
    "watch": _field("repository.id"),
    "workflow_job": _field("workflow_job.id"),
    "workflow_run": _field("workflow_run.id"),
}
KNOWN_EVENTS = frozenset(SUBJECTS)

# Extensions every event gets when its payload has the field (Knative sets these on nearly every
# kind), then the extras Knative sets per kind.
_COMMON_EXTENSIONS = (
    ("owner", "repository.owner.login"),
    ("owner", "organization.login"),  # org-level events have no repository
    ("repository", "repository.name"),
    ("sender", "sender.login"),
    ("action", "action"),
    ("installation", "installation.id"),
)
_EXTRA_EXTENSIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "create": (("ref", "ref"),),
    "delete": (("ref", "ref"),),
    "issues": (("label", "label.name"), ("assignee", "assignee.login")),
    "label": (("label", "label.name"),),
    "membership": (("scope", "scope"),),
    "pull_request": (
        ("number", "number"),
        ("label", "label.name"),
        ("assignee", "assignee.login"),
    ),
    "pull_request_review": (("review", "review.state"),),
    "push": (
        ("pusher", "pusher.name"),
        ("ref", "ref"),
        ("created", "created"),
        ("deleted", "deleted"),
        ("forced", "forced"),
    ),
    "release": (("release", "release.name"),),
    "status": (("state", "state"), ("name", "name"), ("context", "context")),
}


def _extension_value(value: Any) -> AttributeValue | None:
    if isinstance(value, bool | str):
        return value if value != "" else None
    if isinstance(value, int):
        # CloudEvents Integer is 32-bit; larger ids travel as strings.
        return value if value in _INT32 else str(value)
    return None


def subject_and_extensions(
    github_event: str, payload: Mapping[str, Any]
) -> tuple[str, dict[str, AttributeValue]]:
    """Knative's ``subject`` and extensions for one delivery ("" when the kind has none)."""
    rule = SUBJECTS.get(github_event)
    subject = rule(payload) if rule is not None else ""
    extensions: dict[str, AttributeValue] = {}
    for name, path in (*_COMMON_EXTENSIONS, *_EXTRA_EXTENSIONS.get(github_event, ())):
        value = _extension_value(_dig(payload, path))
        if value is not None and name not in extensions:
            extensions[name] = value
    return subject, extensions


def to_cloudevent(
    github_event: str,
    delivery_id: str,
    source: str,
    data: bytes,
    payload: Mapping[str, Any],
) -> CloudEvent:
    """The CloudEvent of one webhook delivery (``data``: the JSON payload bytes as received)."""
    subject, extensions = subject_and_extensions(github_event, payload)
    event = new_event(
        type=event_type(github_event),
        source=source,
        id=delivery_id,
        data=data,
        datacontenttype="application/json",
        extensions=extensions,
    )
    if subject:
        event.attributes["subject"] = subject
    return event


def signature_valid(
    secret: bytes, body: bytes, sha256: str | None, sha1: str | None = None
) -> bool:
    """Whether ``X-Hub-Signature-256`` (or, without it, ``X-Hub-Signature``) signs ``body``."""
    if sha256 is not None:
        algorithm, expected = hashlib.sha256, sha256
        prefix = "sha256="
    elif sha1 is not None:
        algorithm, expected = hashlib.sha1, sha1
        prefix = "sha1="
    else:
        return False
    if not expected.startswith(prefix):
        return False
    digest = hmac.new(secret, body, algorithm).hexdigest()
    return hmac.compare_digest(digest.encode(), expected[len(prefix) :].strip().lower().encode())


# --- admission and reconcile ----------------------------------------------------------------------


def _check_secret_ref(spec: Mapping[str, Any], key: str, *, required: bool) -> None:
    value = spec.get(key)
    if value is None:
        if required:
            raise InvalidResource(
                f"spec.{key}.secretKeyRef",
                "is required: the Secret (name, key) holding the webhook secret",
            )
        return
    if not isinstance(value, Mapping) or not isinstance(value.get("secretKeyRef"), Mapping):
        raise InvalidResource(f"spec.{key}.secretKeyRef", "is required: {name, key} of a Secret")
    ref = value["secretKeyRef"]
    for part in ("name", "key"):
        if not isinstance(ref.get(part), str) or not ref[part]:
            raise InvalidResource(f"spec.{key}.secretKeyRef.{part}", "is required")


def _check(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    spec = obj["spec"]
    owner_and_repository = spec.get("ownerAndRepository")
    if not isinstance(owner_and_repository, str) or not owner_and_repository:
        raise InvalidResource("spec.ownerAndRepository", "is required: owner/repository or owner")
    # Knative checks only that it is set (its own doc sample holds "<YOUR USER>/<YOUR REPO>");
    # more than one "/" or an empty half cannot name an owner or repository.
    owner, slash, repository = owner_and_repository.partition("/")
    if not owner.strip() or (slash and (not repository.strip() or "/" in repository)):
        raise InvalidResource(
            "spec.ownerAndRepository",
            f"{owner_and_repository!r} is not 'owner/repository' (or an organization 'owner')",
        )
    event_types = spec.get("eventTypes")
    if not isinstance(event_types, list) or not event_types:
        raise InvalidResource(
            "spec.eventTypes", "is required: a non-empty list of GitHub event names"
        )
    for index, name in enumerate(event_types):
        if not isinstance(name, str) or name not in KNOWN_EVENTS:
            raise InvalidResource(
                f"spec.eventTypes[{index}]",
                f"unknown GitHub event {name!r}; known: {', '.join(sorted(KNOWN_EVENTS))}",
            )
    _check_secret_ref(spec, "secretToken", required=True)
    _check_secret_ref(spec, "accessToken", required=False)
    api_url = spec.get("githubAPIURL")
    if api_url not in (None, ""):
        check_http_url(api_url, "spec.githubAPIURL")
    if spec.get("secure") is not None and not isinstance(spec["secure"], bool):
        raise InvalidResource("spec.secure", "must be true or false")


def webhook_url(base_url: str, namespace: str, name: str, secure: bool | None = None) -> str:
    """Where GitHub posts a source's deliveries; ``secure`` forces https (true) or http (false)."""
    url = f"{base_url.rstrip('/')}/sources/{WEBHOOK}/{namespace}/{name}"
    if secure is None:
        return url
    return urlunsplit(urlsplit(url)._replace(scheme="https" if secure else "http"))


def _prepare(obj: Mapping[str, Any], context: PrepareContext) -> Mapping[str, Any]:
    spec = obj.get("spec") or {}
    metadata = obj["metadata"]
    namespace = metadata["namespace"]
    field = "spec.secretToken.secretKeyRef"
    secret = context.secret_value(
        namespace, (spec.get("secretToken") or {}).get("secretKeyRef") or {}, field
    )
    if not secret:
        raise SourceNotReady("SecretEmpty", f"{field}: the webhook secret is empty")
    if spec.get("accessToken") is not None:  # checked as Knative does; cemesh does not use it
        context.secret_value(
            namespace, spec["accessToken"]["secretKeyRef"], "spec.accessToken.secretKeyRef"
        )
    return {
        "status": {
            "webhookUrl": webhook_url(
                context.base_url, namespace, metadata["name"], spec.get("secure")
            )
        },
        "secret": secret,
        "source": event_source(str(spec.get("ownerAndRepository", ""))),
    }


def _event_types(obj: Mapping[str, Any]) -> list[str]:
    names = (obj.get("spec") or {}).get("eventTypes") or []
    return [event_type(name) for name in dict.fromkeys(names) if isinstance(name, str)]


# --- the webhook ---------------------------------------------------------------------------------


def _message(text: str) -> bytes:
    return orjson.dumps({"message": text})


class GitHubSource(Source):
    """Answers GitHub's deliveries to ``/sources/github/<namespace>/<name>``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secret = str(self.spec.resolved.get("secret", "")).encode()
        self.source_uri = str(self.spec.resolved.get("source", ""))
        self.event_types = frozenset(self.spec.spec.get("eventTypes") or ())

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_json(
                send, 405, _message("GitHub deliveries are POSTed"), [(b"allow", b"POST")]
            )
            return
        body = await read_body(receive, MAX_PAYLOAD_BYTES)
        if body is None:
            await send_json(send, 413, _message("payload larger than GitHub's 25 MB"))
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        # Authenticate before anything else: an unsigned request learns nothing about the source.
        if not self.secret or not signature_valid(
            self.secret, body, headers.get("x-hub-signature-256"), headers.get("x-hub-signature")
        ):
            await send_json(send, 401, _message("missing or invalid X-Hub-Signature-256"))
            return
        github_event = headers.get("x-github-event", "")
        delivery = headers.get("x-github-delivery", "")
        if not github_event or not delivery:
            await send_json(
                send, 400, _message("X-GitHub-Event and X-GitHub-Delivery headers are required")
            )
            return
        if not delivery.isprintable() or delivery != delivery.strip():
            # It becomes the event's id: the sink would refuse it, and GitHub would see a 502.
            await send_json(send, 400, _message("X-GitHub-Delivery must be printable text"))
            return
        if github_event not in self.event_types:
            text = "pong" if github_event == "ping" else f"{github_event!r} is not in eventTypes"
            await send_json(send, 200, _message(f"{text}; nothing emitted"))
            return
        data = _payload_bytes(headers.get("content-type", ""), body)
        try:
            payload = orjson.loads(data) if data is not None else None
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict) or data is None:
            await send_json(send, 400, _message("the payload is not a JSON object"))
            return
        event = to_cloudevent(github_event, delivery, self.source_uri, data, payload)
        try:
            await self.sink.send(event)
        except DeliveryError as exc:
            self.log.warning("delivery not taken by the sink", extra={"error": exc.message})
            await send_json(
                send, 502, _message(f"the sink did not accept the event: {exc.message}")
            )
            return
        await send_json(send, 202, _message("accepted"))


def _payload_bytes(content_type: str, body: bytes) -> bytes | None:
    """The JSON payload: the body, or its ``payload`` field when GitHub sends a form."""
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        values = parse_qs(body.decode("utf-8", "replace")).get("payload")
        return values[0].encode() if values else None
    return body


GITHUB_SOURCE_KIND = SourceKind(
    resource=GITHUB_SOURCE,
    runner=GitHubSource,
    check=_check,
    prepare=_prepare,
    event_types=_event_types,
    webhook=WEBHOOK,
)
