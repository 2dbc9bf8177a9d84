"""A hostile web page in a real headless Chromium cannot change a running cemesh.

The user runs cemesh on 127.0.0.1 and browses to a page on another origin (``localhost`` on
another port, a different site). The page tries every way a browser offers to write to the
management API: ``fetch()`` with text/plain (a "simple" request, no preflight), with JSON with
and without credentials, with the bearer token itself (the worst case: the attacker knows it),
``sendBeacon``, and form posts (urlencoded, multipart, and text/plain crafted so that the body is
valid JSON creating a ContainerSource that would run a command). The user's browser also holds
the token in a cookie for cemesh's origin. Then a DNS-rebinding page: its own origin resolves to
127.0.0.1, so its requests to cemesh are same-origin and may carry the token; only the Host
check stands in the way.

Afterwards nothing is in the store, the command never ran, and the requests that reached cemesh
were answered 401/415/421 (seen in Chromium's network events, so the test proves the requests
arrived, not merely that they failed). Chromium is Debian's (``tests/support/install_servers.sh``),
driven by Playwright with a fresh profile; when it cannot start, the test fails.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Response, async_playwright

from tests.support.cemesh import running_cemesh

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROKERS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"
CONTAINER_SOURCES = "/apis/sources.knative.dev/v1/namespaces/default/containersources"

ATTACK_JS = """
async (args) => {
  const {api, token, marker} = args;
  const broker = (name) => JSON.stringify(
    {apiVersion: "eventing.knative.dev/v1", kind: "Broker", metadata: {name}});
  const source = JSON.stringify({
    apiVersion: "sources.knative.dev/v1", kind: "ContainerSource", metadata: {name: "pwned"},
    spec: {template: {spec: {containers: [{image: "x", command: ["touch", marker]}]}},
           sink: {uri: "http://127.0.0.1:9/"}}});
  const results = {};
  const attempt = async (label, url, init) => {
    try {
      const response = await fetch(url, init);
      results[label] = `status ${response.status} (${response.type})`;
    } catch (error) {
      results[label] = `blocked: ${error}`;
    }
  };
  const brokers = api + "/apis/eventing.knative.dev/v1/namespaces/default/brokers";
  const sources = api + "/apis/sources.knative.dev/v1/namespaces/default/containersources";
  await attempt("text/plain no-cors", brokers, {method: "POST", mode: "no-cors",
    credentials: "include", headers: {"Content-Type": "text/plain"}, body: broker("fetch-text")});
  await attempt("text/plain container source", sources, {method: "POST", mode: "no-cors",
    credentials: "include", headers: {"Content-Type": "text/plain"}, body: source});
  await attempt("json without credentials", brokers, {method: "POST",
    headers: {"Content-Type": "application/json"}, body: broker("fetch-json")});
  await attempt("json with credentials", brokers, {method: "POST", credentials: "include",
    headers: {"Content-Type": "application/json"}, body: broker("fetch-json-cred")});
  await attempt("json with the token", sources, {method: "POST", credentials: "include",
    headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token},
    body: source});
  await attempt("yaml with the token", brokers, {method: "POST",
    headers: {"Content-Type": "application/yaml", "Authorization": "Bearer " + token},
    body: "apiVersion: eventing.knative.dev/v1\\nkind: Broker\\nmetadata: {name: y}\\n"});
  await attempt("read secrets", api + "/api/v1/secrets", {credentials: "include"});
  results["beacon"] = String(navigator.sendBeacon(brokers, broker("beacon")));

  const post = (label, enctype, fields) => new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.name = label;
    document.body.appendChild(frame);
    const form = document.createElement("form");
    form.method = "POST";
    form.action = label.startsWith("form source") ? sources : brokers;
    form.enctype = enctype;
    form.target = label;
    for (const [name, value] of fields) {
      const input = document.createElement("input");
      input.type = "hidden"; input.name = name; input.value = value;
      form.appendChild(input);
    }
    document.body.appendChild(form);
    frame.addEventListener("load", () => resolve(), {once: true});
    form.submit();
    setTimeout(resolve, 5000);
  });
  // text/plain forms send "name=value": split the JSON so that the "=" lands inside a string.
  const split = (json) => {
    const cut = json.lastIndexOf("}");
    return [[json.slice(0, cut) + ', "pad": "', '"' + json.slice(cut)]];
  };
  await post("form urlencoded", "application/x-www-form-urlencoded", [["body", broker("f1")]]);
  await post("form multipart", "multipart/form-data", [["body", broker("f2")]]);
  await post("form text/plain", "text/plain", split(broker("f3")));
  await post("form source text/plain", "text/plain", split(source));
  results["forms"] = "submitted";
  return results;
}
"""

REBIND_JS = """
async (args) => {
  const {token, marker} = args;
  const source = JSON.stringify({
    apiVersion: "sources.knative.dev/v1", kind: "ContainerSource", metadata: {name: "rebound"},
    spec: {template: {spec: {containers: [{image: "x", command: ["touch", marker]}]}},
           sink: {uri: "http://127.0.0.1:9/"}}});
  const results = {};
  for (const [label, headers] of [
      ["rebind json", {"Content-Type": "application/json"}],
      ["rebind json with the token", {"Content-Type": "application/json",
                                      "Authorization": "Bearer " + token}]]) {
    try {
      const response = await fetch(
        "/apis/sources.knative.dev/v1/namespaces/default/containersources",
        {method: "POST", headers, body: source});
      results[label] = `status ${response.status}: ${await response.text()}`;
    } catch (error) {
      results[label] = `blocked: ${error}`;
    }
  }
  return results;
}
"""

PAGE = b"<!doctype html><html><head><title>cat pictures</title></head><body></body></html>"


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def attacker_site() -> Iterator[str]:
    """A real HTTP server for the attacker's page, on localhost:<port> (another site)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_cross_origin_page_and_a_dns_rebinding_page_change_nothing(
    tmp_path: Path, attacker_site: str
) -> None:
    marker = tmp_path / "pwned"
    async with running_cemesh(tmp_path) as mesh, async_playwright() as playwright:
        rebind_port = int(mesh.url.rsplit(":", 1)[1])
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=[
                *CHROMIUM_ARGS,
                "--host-resolver-rules=MAP rebind.test 127.0.0.1",
                # The browser's own guard for pages reaching local addresses is switched off:
                # cemesh must hold without it (older browsers, other browsers).
                "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
                "PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults",
            ],
        )
        try:
            await browser.add_cookies(
                [{"name": "cemesh_token", "value": mesh.token, "url": mesh.url}]
            )
            seen: list[tuple[str, str, int]] = []

            def record(response: Response) -> None:
                rebind_api = f"http://rebind.test:{rebind_port}/apis/"
                if response.url.startswith((mesh.url, rebind_api)):
                    seen.append((response.request.method, response.url, response.status))

            browser.on("response", record)
            page = await browser.new_page()
            await page.goto(attacker_site)
            args = {"api": mesh.url, "token": mesh.token, "marker": str(marker)}
            results = await asyncio.wait_for(page.evaluate(ATTACK_JS, args), 60)

            # DNS rebinding: the page's own origin resolves to cemesh's address; Playwright
            # hands out the page itself, every later request goes to cemesh over the network.
            rebind_origin = f"http://rebind.test:{rebind_port}"
            rebind = await browser.new_page()
            await rebind.route(
                f"{rebind_origin}/",
                lambda route: route.fulfill(status=200, content_type="text/html", body=PAGE),
            )
            await rebind.goto(f"{rebind_origin}/")
            rebound = await asyncio.wait_for(rebind.evaluate(REBIND_JS, args), 30)
        finally:
            await browser.close()

        report = json.dumps({**results, **rebound}, indent=1)
        for label in ("json without credentials", "json with credentials", "json with the token"):
            assert results[label].startswith("blocked"), report  # no CORS: the preflight fails
        assert results["read secrets"].startswith("blocked"), report
        for label in ("rebind json", "rebind json with the token"):
            assert rebound[label].startswith("status 421"), report

        # The simple requests did reach cemesh (2 no-cors fetches, the beacon, 4 forms): 415.
        refused = [status for _, _, status in seen]
        assert refused.count(415) >= 6 and refused.count(421) == 2, (seen, report)
        assert all(status >= 400 for _, _, status in seen), (seen, report)

        for path in (BROKERS, CONTAINER_SOURCES):
            listed = await mesh.client.get(path)
            assert listed.status_code == 200
            assert listed.json()["items"] == [], (path, report)
    assert not marker.exists()
