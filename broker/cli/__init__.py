"""The ``cemesh`` command line: ``serve``, ``apply``, ``get``, ``delete``, ``send``, ``tail``,
``describe``, ``replay``, ``db upgrade``.

It talks to a running cemesh over its Kubernetes-style REST API (``--server`` / ``CEMESH_URL``)
the way kubectl and kn talk to Kubernetes. This package is the public surface: every name the
commands and tests use is importable from ``broker.cli``. Its modules, one job each:

- pure functions (no I/O):
  :mod:`~broker.cli.manifests` (loading manifests, the apply decision),
  :mod:`~broker.cli.redaction` (Secret values and passwords never printed),
  :mod:`~broker.cli.tables` (``get`` output, one row of :data:`COLUMNS` per kind),
  :mod:`~broker.cli.events` (``--to`` resolution and the event ``send`` builds),
  :mod:`~broker.cli.failures` (the CLI's error classes and their one-line messages);
- thin I/O: :mod:`~broker.cli.client` (:class:`ApiClient`, httpx, short timeouts) and
  :mod:`~broker.cli.state` (the root group, its error mapping, server and token),
  :mod:`~broker.cli.commands` (the click commands and :func:`main`, the console script),
  :mod:`~broker.cli.observe` (``tail``, ``describe`` and ``get -w``'s polling, with their pure
  line formats), :mod:`~broker.cli.replay` (``replay``: a Replay created and its progress shown),
  :mod:`~broker.cli.waiting` (``apply --wait``: how many applied objects are Ready).

Every failure ends as ONE line on stderr, ``error: ...``, and a non-zero exit; a traceback is
never shown.
"""

from broker.cli.client import DEFAULT_SERVER, HTTP_TIMEOUT, ApiClient, all_namespaces_path
from broker.cli.commands import _describe as _describe
from broker.cli.commands import _documents as _documents
from broker.cli.commands import _error_line as _error_line
from broker.cli.commands import _message as _message
from broker.cli.commands import _read_data as _read_data
from broker.cli.commands import (
    apply,
    apply_one,
    cli,
    db,
    delete,
    get,
    load_settings,
    main,
    namespace_option,
    pass_state,
    send,
    serve,
    upgrade,
)
from broker.cli.events import build_event, default_content_type, parse_extensions, resolve_target
from broker.cli.failures import (
    ApiError,
    CliError,
    Unreachable,
    api_error,
    server_message,
    settings_error,
    transport_reason,
    unreachable,
)
from broker.cli.manifests import (
    DEFAULT_NAMESPACE,
    MANIFEST_SUFFIXES,
    Decision,
    Document,
    ManifestError,
    admission_defaults,
    apply_decision,
    desired_state,
    load_documents,
    manifest_files,
    object_name,
    object_namespace,
    object_ref,
    object_type,
    parse_manifest,
    qualified_kind,
    with_version,
)
from broker.cli.manifests import _expand_lists as _expand_lists
from broker.cli.manifests import _not_an_object as _not_an_object
from broker.cli.redaction import REDACTED, hide_secret, mask_password, redact
from broker.cli.state import _Cli as _Cli
from broker.cli.state import _State as _State
from broker.cli.tables import (
    CHANNEL_COLUMNS,
    COLUMNS,
    DEAD_LETTER_URI,
    DEFAULT_COLUMNS,
    READY,
    REASON,
    SUBSCRIBER_URI,
    URL,
    Column,
    condition,
    dig,
    dig_list,
    empty_message,
    format_table,
    human_age,
    ready,
    reason,
    render_objects,
    render_table,
    table_rows,
)
from broker.cli.tables import _channel_ref as _channel_ref
from broker.cli.tables import _filter_summary as _filter_summary
from broker.cli.tables import _service_replicas as _service_replicas
from broker.cli.tables import _service_scaling as _service_scaling
from broker.cli.tables import _spec_count as _spec_count

__all__ = [
    "CHANNEL_COLUMNS",
    "COLUMNS",
    "DEAD_LETTER_URI",
    "DEFAULT_COLUMNS",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SERVER",
    "HTTP_TIMEOUT",
    "MANIFEST_SUFFIXES",
    "READY",
    "REASON",
    "REDACTED",
    "SUBSCRIBER_URI",
    "URL",
    "ApiClient",
    "ApiError",
    "CliError",
    "Column",
    "Decision",
    "Document",
    "ManifestError",
    "Unreachable",
    "admission_defaults",
    "all_namespaces_path",
    "api_error",
    "apply",
    "apply_decision",
    "apply_one",
    "build_event",
    "cli",
    "condition",
    "db",
    "default_content_type",
    "delete",
    "desired_state",
    "dig",
    "dig_list",
    "empty_message",
    "format_table",
    "get",
    "hide_secret",
    "human_age",
    "load_documents",
    "load_settings",
    "main",
    "manifest_files",
    "mask_password",
    "namespace_option",
    "object_name",
    "object_namespace",
    "object_ref",
    "object_type",
    "parse_extensions",
    "parse_manifest",
    "pass_state",
    "qualified_kind",
    "ready",
    "reason",
    "redact",
    "render_objects",
    "render_table",
    "resolve_target",
    "send",
    "serve",
    "server_message",
    "settings_error",
    "table_rows",
    "transport_reason",
    "unreachable",
    "upgrade",
    "with_version",
]
