"""A real Kubernetes API server for tests: etcd plus apiextensions-apiserver, on loopback.

The binaries come from ``tests/support/kube_apiserver/build.sh`` (run by ``make servers``):
k8s.io/apiextensions-apiserver, the CRD server inside kube-apiserver (the generic registry,
etcd3 storage, watch cache, bookmarks, status subresource, 409 and 410), built from Debian
sid's Go packages, with etcd 3.5 and kubectl, cached in :data:`CACHE_DIR`. It serves
CustomResourceDefinitions and custom resources only: no Namespaces, Services, ConfigMaps or
Leases (``tests/data/kube/crds/lease-shim.yaml`` serves Leases as a CRD). Custom resources
may be created in any namespace name, as no Namespace objects exist.

Fixtures (registered in ``tests/conftest.py`` through ``pytest_plugins``):

- ``kube_apiserver`` (session): etcd and the API server on free ports of 127.0.0.1, with a CA,
  a serving certificate and an admin client certificate (group ``system:masters``) made with
  ``openssl``; ``kubeconfig`` embeds them. The project's CRDs (``tests/data/kube/crds``) are
  applied and Established. Tests share it by using namespaces of their own. Both processes are
  stopped (their PIDs only) at the end of the session.

:func:`launch` starts one in a given dir with other CRDs (the extra pass over Knative's own).
When the binaries are missing or a process does not start, the fixture fails (never skips)
and says why, with the log's tail. The process lifecycle is
:class:`tests.support.servers.base.ServerProcess`'s.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.support.servers import base
from tests.support.servers.base import free_port as _free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "tests" / "support" / "kube_apiserver" / "build.sh"
PROJECT_CRDS = REPO_ROOT / "tests" / "data" / "kube" / "crds"


def _cache_dir() -> Path:
    explicit = os.environ.get("KUBE_APISERVER_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cemesh" / "kube-apiserver"


CACHE_DIR = _cache_dir()
BIN_DIR = CACHE_DIR / "bin"
INSTALL_HINT = (
    f"build it with `make servers` (runs {BUILD_SCRIPT.relative_to(REPO_ROOT)}: Debian sid's Go "
    f"packages in a private apt root, ~3-5 min once, cached in {CACHE_DIR})"
)
CRD_TIMEOUT = 60.0
KUBECTL_TIMEOUT = 60.0


def find_binary(binary: str) -> Path:
    """``binary`` from the build cache; fails the test (never skips) if it was not built."""
    path = BIN_DIR / binary
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{binary} not found in {BIN_DIR}. The Kubernetes tests need a real API server: "
            f"{INSTALL_HINT}",
            pytrace=False,
        )
    return path


def find_kubectl() -> Path:
    """Debian sid's kubectl from the build cache, else one on PATH; fails the test if none."""
    return base.require_binary(
        "kubectl",
        bus="Kubernetes",
        hint=INSTALL_HINT,
        first=[BIN_DIR / "kubectl"],
        searched=f"in {BIN_DIR} nor on PATH",
        need="kubectl",
    )


# -- certificates --------------------------------------------------------------------------

_EXTENSIONS = """\
[ca]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
[server]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
authorityKeyIdentifier=keyid,issuer
[client]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid,issuer
"""


@dataclass(frozen=True)
class Pki:
    """A CA, the API server's serving certificate and an admin client certificate."""

    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def ready(self) -> bool:
        return self.path("admin.crt").is_file()

    def make(self) -> None:
        """EC P-256 keys; the admin is in ``system:masters``, which skips authorization."""
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.fail(
                "openssl not found: the test API server's certificates need it "
                "(apt-get install openssl)",
                pytrace=False,
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path("ext.cnf").write_text(_EXTENSIONS)

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True, cwd=self.dir)

        def key(name: str) -> None:
            run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", f"{name}.key")  # fmt: skip

        key("ca")
        run("req", "-new", "-key", "ca.key", "-subj", "/CN=cemesh-test-ca", "-out", "ca.csr")
        run("x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-days", "3650",
            "-extfile", "ext.cnf", "-extensions", "ca", "-out", "ca.crt")  # fmt: skip
        for name, subject, extensions in (
            ("server", "/CN=localhost", "server"),
            ("admin", "/O=system:masters/CN=cemesh-test-admin", "client"),
        ):
            key(name)
            run("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr")
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "3650", "-extfile", "ext.cnf",
                "-extensions", extensions, "-out", f"{name}.crt")  # fmt: skip
        for private in self.dir.glob("*.key"):
            private.chmod(0o600)

    def client_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.path("ca.crt")))
        context.load_cert_chain(str(self.path("admin.crt")), str(self.path("admin.key")))
        return context


def kubeconfig_text(url: str, pki: Pki) -> str:
    """A kubeconfig for ``url`` as the admin, with the certificates embedded (JSON is YAML)."""

    def data(name: str) -> str:
        return base64.b64encode(pki.path(name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "cemesh-test",
             "cluster": {"server": url, "certificate-authority-data": data("ca.crt")}}
        ],
        "users": [
            {"name": "cemesh-test-admin",
             "user": {"client-certificate-data": data("admin.crt"),
                      "client-key-data": data("admin.key")}}
        ],
        "contexts": [
            {"name": "cemesh-test",
             "context": {"cluster": "cemesh-test", "user": "cemesh-test-admin",
                         "namespace": "default"}}
        ],
        "current-context": "cemesh-test",
    }  # fmt: skip
    return json.dumps(config, indent=2)


# -- the two processes -------------------------------------------------------------------


@dataclass
class Etcd(base.ServerProcess):
    """etcd 3.5 with a fresh data dir on every start, no fsync (test data only)."""

    name = "etcd"
    log_name = "etcd.log"

    client_port: int = field(default_factory=_free_port)
    peer_port: int = field(default_factory=_free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "etcd-data"

    def prepare(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.base_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            str(self.binary),
            "--name", "cemesh-test",
            "--data-dir", str(self.data_dir),
            "--log-level", "warn",
            "--unsafe-no-fsync",
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"cemesh-test={peer}",
        ]  # fmt: skip

    @property
    def probe_target(self) -> str:
        return f"{self.url}/health"

    def probe(self) -> str | None:
        with urllib.request.urlopen(self.probe_target, timeout=1.0) as answer:
            health = json.loads(answer.read())
        return None if health.get("health") == "true" else json.dumps(health)


@dataclass
class ApiExtensionsServer(base.ServerProcess):
    """apiextensions-apiserver on https://127.0.0.1:PORT, backed by ``etcd_url``.

    Its own kubeconfig points at itself: client certificates are verified locally and the
    admin's group ``system:masters`` bypasses delegated authorization. Admission plugins
    that need core APIs (Namespaces, webhooks, policies) are off.
    """

    name = "apiextensions-apiserver"
    log_name = "apiserver.log"

    etcd_url: str = ""
    pki: Pki | None = None
    kubeconfig: Path | None = None
    extra_args: Sequence[str] = ()
    port: int = field(default_factory=_free_port)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        assert self.pki is not None and self.kubeconfig is not None
        pki = self.pki
        return [
            str(self.binary),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={pki.path('server.crt')}",
            f"--tls-private-key-file={pki.path('server.key')}",
            f"--client-ca-file={pki.path('ca.crt')}",
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            "--authentication-skip-lookup",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/version",
            "--disable-admission-plugins=NamespaceLifecycle,MutatingAdmissionWebhook,"
            "ValidatingAdmissionWebhook,MutatingAdmissionPolicy,ValidatingAdmissionPolicy",
            "--enable-priority-and-fairness=false",
            *self.extra_args,
        ]

    @property
    def probe_target(self) -> str:
        # /readyz stays 500 here (a core Service informer of the conversion webhooks cannot
        # list); /apis answering is what clients need.
        return f"{self.url}/apis"

    def probe(self) -> str | None:
        assert self.pki is not None
        context = self.pki.client_ssl_context()
        with urllib.request.urlopen(self.probe_target, timeout=2.0, context=context) as answer:
            return None if answer.status == 200 else f"HTTP {answer.status}"


@dataclass
class KubeApiServer:
    """etcd and the API server, started and stopped together, and a kubectl for them."""

    base_dir: Path
    etcd: Etcd
    apiserver: ApiExtensionsServer
    kubectl_binary: Path

    @property
    def url(self) -> str:
        """The API server's https URL (its CA is ``pki.path('ca.crt')``)."""
        return self.apiserver.url

    @property
    def kubeconfig(self) -> Path:
        """A kubeconfig as the admin (certificates embedded), for kubectl and clients."""
        assert self.apiserver.kubeconfig is not None
        return self.apiserver.kubeconfig

    @property
    def pki(self) -> Pki:
        assert self.apiserver.pki is not None
        return self.apiserver.pki

    def start(self) -> None:
        """etcd first (fresh data), then the API server; stops etcd if the server fails."""
        self.etcd.start()
        try:
            self.apiserver.start()
        except base.ServerStartError:
            self.etcd.stop()
            raise

    def stop(self) -> None:
        """The API server, then etcd (their PIDs only)."""
        self.apiserver.stop()
        self.etcd.stop()

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl --kubeconfig=... ARGS``; on failure with ``check``, fails the test."""
        command = [str(self.kubectl_binary), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT,
            check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            pytest.fail(
                f"`kubectl {' '.join(args)}` exited {result.returncode}:\n{result.stderr}",
                pytrace=False,
            )
        return result

    def apply_crds(self, path: Path, timeout: float = CRD_TIMEOUT) -> list[str]:
        """Apply the CRDs of ``path`` (a file or a dir), wait until all are Established and
        their resources served; their names.

        The first request to a new resource gets ``429 storage is (re)initializing`` while
        its watch cache fills; kubectl retries that, so a ``get`` of each warms them up for
        clients that do not retry (kubernetes_asyncio).
        """
        applied = self.kubectl("apply", "-f", "-", "-o", "name", stdin=crd_documents(path))
        names = [name.split("/", 1)[1] for name in applied.stdout.split()]
        deadline = time.monotonic() + timeout
        while True:  # `kubectl wait` fails at once on a CRD that has no conditions yet
            waited = self.kubectl(
                "wait", "--for=condition=Established", "--timeout=10s",
                *(f"crd/{name}" for name in names), check=False,
            )  # fmt: skip
            if waited.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"CRDs of {path} not Established: {waited.stderr}", pytrace=False)
            time.sleep(0.2)  # a poll interval, bounded by the deadline
        self.kubectl("get", ",".join(names), "--all-namespaces")
        return names


def crd_documents(path: Path) -> str:
    """The YAML files of ``path`` (a file or a dir) as one stream of single objects.

    ``tests/data/kube/crds/eventing.yaml`` is a ``v1 List`` so that Broker and Trigger share
    YAML anchors; kubectl's client-side validation of a List needs the core OpenAPI, which this
    server does not have, so Lists are flattened here (anchors resolved by the YAML loader).
    """
    files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
    objects: list[object] = []
    for file in files:
        for document in yaml.safe_load_all(file.read_text()):
            if not document:
                continue
            if document.get("kind") == "List":
                objects.extend(document["items"])
            else:
                objects.append(document)
    return yaml.safe_dump_all(objects, sort_keys=False)


def launch(
    base_dir: Path, *, crds: Sequence[Path] = (PROJECT_CRDS,), apiserver_args: Sequence[str] = ()
) -> KubeApiServer:
    """A started API server in ``base_dir`` with ``crds`` applied (``apiserver_args``: extra
    flags, e.g. ``--watch-cache=false``); fails the test (with the log's tail) if it cannot
    build the setup or start."""
    pki = Pki(base_dir / "pki")
    if not pki.ready:
        pki.make()
    etcd = Etcd(find_binary("etcd"), base_dir)
    apiserver = ApiExtensionsServer(
        find_binary("apiextensions-apiserver"),
        base_dir,
        etcd_url=etcd.url,
        pki=pki,
        extra_args=tuple(apiserver_args),
    )
    apiserver.kubeconfig = base_dir / "kubeconfig"
    apiserver.kubeconfig.write_text(kubeconfig_text(apiserver.url, pki))
    apiserver.kubeconfig.chmod(0o600)
    server = KubeApiServer(base_dir, etcd, apiserver, find_kubectl())
    try:
        server.start()
    except (base.ServerStartError, OSError) as exc:
        pytest.fail(f"the test Kubernetes API server did not start: {exc}\n({INSTALL_HINT})",
                    pytrace=False)  # fmt: skip
    try:
        for path in crds:
            server.apply_crds(path)
    except BaseException:
        server.stop()
        raise
    return server


def running_in_temp_dir(
    prefix: str, *, crds: Sequence[Path] = (PROJECT_CRDS,)
) -> Iterator[KubeApiServer]:
    """A fixture's body (``yield from`` it): a server in a new temp dir, stopped and its dir
    removed after."""
    base_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        server = launch(base_dir, crds=crds)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeApiServer]:
    """One real Kubernetes API server with the project's CRDs, for the whole session."""
    yield from running_in_temp_dir("cemesh-kube-")


@pytest.fixture(name="server")
def private_server(tmp_path: Path) -> Iterator[KubeApiServer]:
    """An API server of the test's own (restarted, compacted or emptied by the test)."""
    server = launch(tmp_path / "kube")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="server_without_watch_cache")
def private_server_without_watch_cache(tmp_path: Path) -> Iterator[KubeApiServer]:
    """Watches go to etcd itself, so a compacted resourceVersion answers 410 at once."""
    server = launch(tmp_path / "kube", apiserver_args=["--watch-cache=false"])
    try:
        yield server
    finally:
        server.stop()
