"""The management API of one cemesh, over httpx (sync, short timeouts): thin I/O.

Transport failures become :class:`~broker.cli.failures.Unreachable` and error answers
:class:`~broker.cli.failures.ApiError`, both carrying the one line the CLI prints.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from broker.cli.failures import ApiError, CliError, api_error, unreachable
from broker.controlplane.catalog import ResourceType

DEFAULT_SERVER = "http://127.0.0.1:8080"
# Management calls wait for a controller sync; a few seconds is plenty on one host, and a
# short connect timeout makes "nothing listens there" quick to report.
HTTP_TIMEOUT = httpx.Timeout(15.0, connect=3.0)


def tls_verification(ca_file: str | None) -> ssl.SSLContext:
    """How the CLI checks a cemesh's https certificate: against ``ca_file`` (``--cacert``,
    ``CEMESH_CA_FILE``) when given, else against the system's CA bundle."""
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot use --cacert {ca_file}: {exc}") from exc


class ApiClient:
    """The management API of one cemesh, over httpx (sync). Errors become :class:`CliError`."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        token_source: str = "",
        timeout: httpx.Timeout = HTTP_TIMEOUT,
        ca_file: str | Path | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token_source = token_source
        self._timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = tls_verification(None if ca_file is None else str(ca_file))
        # One httpx.Client per thread that calls: `cemesh apply` sends from 64 threads, and one
        # shared client's connection pool made them take turns on its lock, doing its
        # bookkeeping over every connection under it; that doubled the CPU of applying 1,000
        # objects (2.7 -> 5.4 s, issue 14). Each thread's client keeps its connection open.
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()

    def _http(self) -> httpx.Client:
        """This thread's client."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                base_url=self.server, timeout=self._timeout, headers=self._headers,
                verify=self._verify,
            )  # fmt: skip
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http().request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc, hint=True) from exc

    def stream_lines(self, path: str, params: dict[str, str] | None = None) -> Iterator[str]:
        """The lines of a streamed GET answer as they arrive (no read timeout: a stream may be
        quiet for long); :class:`ApiError` with the server's message for a non-2xx answer."""
        timeout = httpx.Timeout(self._timeout.connect, read=None)
        try:
            with self._http().stream("GET", path, params=params, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    raise self._error(response)
                yield from response.iter_lines()
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc, hint=True) from exc

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON body of a 2xx answer; :class:`ApiError` with the server's message otherwise."""
        response = self.request(method, path, **kwargs)
        if response.is_success:
            try:
                body = response.json()
            except ValueError as exc:
                raise CliError(
                    f"{self.server}{path} did not answer JSON; is {self.server} a cemesh?"
                ) from exc
            return body if isinstance(body, dict) else {"items": body}
        raise self._error(response)

    def _error(self, response: httpx.Response) -> ApiError:
        """The error of a non-2xx answer; a 401 says which token was sent."""
        error = api_error(response)
        if response.status_code == 401:
            sent = self.token_source or "no token"
            return ApiError(error.status, error.reason, f"{error.format_message()} (sent {sent})")
        return error

    def list(
        self, rtype: ResourceType, namespace: str | None, selector: str | None
    ) -> dict[str, Any]:
        path = rtype.collection_path(namespace) if namespace else all_namespaces_path(rtype)
        params = {"labelSelector": selector} if selector else None
        return self.call("GET", path, params=params)

    def get(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return self.call("GET", f"{rtype.collection_path(namespace)}/{name}")

    def create(self, rtype: ResourceType, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", rtype.collection_path(namespace), json=obj)

    def replace(
        self, rtype: ResourceType, namespace: str, name: str, obj: dict[str, Any]
    ) -> dict[str, Any]:
        return self.call("PUT", f"{rtype.collection_path(namespace)}/{name}", json=obj)

    def delete(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return self.call("DELETE", f"{rtype.collection_path(namespace)}/{name}")


def all_namespaces_path(rtype: ResourceType) -> str:
    prefix = f"/apis/{rtype.group}/{rtype.version}" if rtype.group else f"/api/{rtype.version}"
    return f"{prefix}/{rtype.plural}"
