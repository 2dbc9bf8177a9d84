"""The web console in a real headless Chromium, against a real ``cemesh serve`` child.

A small mesh is applied (a Broker, a PingSource into it, a Trigger to an HTTP subscriber, a
Trigger to a Service whose Revision keeps one replica, and a Trigger to a Service that does not
exist). Then, as a person would: the console sends an unknown browser to its login form, a wrong
token is refused, the right one opens the console; the graph draws every applied object in its
Ready colour; clicking a node on the canvas shows its YAML and conditions; an event sent from the
form appears in the live stream and reaches the subscriber; the Revision's replicas show.
The page must run under its Content-Security-Policy without a single violation or error.

Also: without a session the console and its endpoints refuse (redirect to the login form, 401),
the management API never takes the console's cookie, and a page of the same site on another
port, with the user logged in, cannot send an event or log the user out (wrong Origin, no CSRF
token: 403), nor can any client without the CSRF token.

Chromium is Debian's ``/usr/bin/chromium`` (``tests/support/install_servers.sh``), driven by
Playwright; when it is missing or cannot start, the test fails. Screenshots go to
``$CEMESH_CONSOLE_SHOTS`` when set (else into the test's tmp_path).
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Request, Response, async_playwright

from tests.support.process import CemeshProcess, cemesh_process
from tests.support.subscriber import RecordingSubscriber

CHROMIUM = Path("/usr/bin/chromium")
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
FUNCTION = str(Path(__file__).parents[1] / "support" / "function_server.py")
EVENTS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers/default/events"
TOPOLOGY = "/apis/cemesh.dev/v1alpha1/namespaces/default/topology"
READY_RGB = "rgb(46,125,50)"
NOT_READY_RGB = "rgb(198,40,40)"


def mesh(subscriber_url: str) -> list[dict[str, Any]]:
    def trigger(name: str, subscriber: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": name},
            "spec": {"broker": "default", "subscriber": subscriber},
        }

    def service_ref(name: str) -> dict[str, Any]:
        return {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": name}}

    return [
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": "default"},
        },
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": "auditor"},
            "spec": {
                "template": {
                    "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "1"}},
                    "spec": {"containers": [{"command": [sys.executable, FUNCTION]}]},
                }
            },
        },
        trigger("orders", {"uri": subscriber_url}),
        trigger("audit", service_ref("auditor")),
        trigger("broken", service_ref("nowhere")),
        {
            "apiVersion": "sources.knative.dev/v1",
            "kind": "PingSource",
            "metadata": {"name": "tick"},
            "spec": {
                "schedule": "0 0 1 1 *",  # once a year: the test's events are its own
                "data": '{"tick": true}',
                "sink": {
                    "ref": {
                        "apiVersion": "eventing.knative.dev/v1",
                        "kind": "Broker",
                        "name": "default",
                    }
                },
            },
        },
    ]


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CEMESH_CONSOLE_SHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cookie_for(token: str) -> str:
    """The console's session cookie for ``token``, as its login sets it."""
    return "cemesh_console=" + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.1)


async def apply(client: httpx.AsyncClient, objects: list[dict[str, Any]]) -> None:
    plurals = {
        "Broker": "eventing.knative.dev/v1/namespaces/default/brokers",
        "Trigger": "eventing.knative.dev/v1/namespaces/default/triggers",
        "Service": "serving.knative.dev/v1/namespaces/default/services",
        "PingSource": "sources.knative.dev/v1/namespaces/default/pingsources",
    }
    for obj in objects:
        response = await client.post(f"/apis/{plurals[obj['kind']]}", json=obj)
        assert response.status_code == 201, response.text


async def revision_has_a_replica(client: httpx.AsyncClient) -> bool:
    listed = await client.get("/apis/serving.knative.dev/v1/namespaces/default/revisions")
    return any(
        (item.get("status") or {}).get("actualReplicas") == 1 for item in listed.json()["items"]
    )


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Debian's chromium is not at {CHROMIUM}: install it (`apt-get install chromium`, "
            "or `make servers` as root); the console is tested in a real browser"
        )
    return CHROMIUM


@pytest.fixture
async def served_mesh(tmp_path: Path) -> AsyncIterator[tuple[CemeshProcess, RecordingSubscriber]]:
    async with (
        RecordingSubscriber() as subscriber,
        cemesh_process(tmp_path, resync_interval="0.2", invoker_autoscaler_tick="0.2") as cemesh,
    ):
        async with cemesh.client() as client:
            await apply(client, mesh(subscriber.url))
            await eventually(lambda: revision_has_a_replica(client))
        yield cemesh, subscriber


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


def record_problems(page: Page) -> list[str]:
    """Console errors (CSP violations among them) and uncaught exceptions of ``page``."""
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


async def log_in(page: Page, url: str, token: str) -> None:
    await page.goto(f"{url}/console/")
    assert page.url == f"{url}/console/login"  # no session: the login form
    await page.fill("#token", "not-the-token")
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert "not valid" in await page.locator(".error").inner_text()
    await page.fill("#token", token)
    async with page.expect_navigation(url=f"{url}/console/"):
        await page.click("button[type=submit]")


GRAPH_JS = """() => window.cemesh.cy.nodes().map((n) => ({
  kind: n.data('kind'), name: n.data('name'), ready: n.data('ready').status,
  colour: n.style('background-color').replace(/ /g, ''), missing: n.hasClass('missing')}))"""

CLICK_POINT_JS = """(name) => {
  const node = window.cemesh.cy.nodes().filter((n) => n.data('name') === name)[0];
  const box = document.getElementById('graph').getBoundingClientRect();
  const at = node.renderedPosition();
  return {x: box.left + at.x, y: box.top + at.y};
}"""


async def test_the_console_draws_the_mesh_shows_objects_and_streams_a_sent_event(
    tmp_path: Path,
    served_mesh: tuple[CemeshProcess, RecordingSubscriber],
    browser: Browser,
) -> None:
    cemesh, subscriber = served_mesh
    shots = shots_dir(tmp_path)
    context = await browser.new_context(viewport={"width": 1500, "height": 950})
    page = await context.new_page()
    await log_in(page, cemesh.url, cemesh.token)  # (the wrong token's 401 is logged)
    problems = record_problems(page)
    await page.reload()

    # The graph: every applied object, owned Revision and referenced URL, in its colour.
    await page.wait_for_function("() => window.cemesh && window.cemesh.cy.nodes().length >= 9")
    nodes = {(n["kind"], n["name"]): n for n in await page.evaluate(GRAPH_JS)}
    for key in [
        ("Broker", "default"),
        ("Trigger", "orders"),
        ("Trigger", "audit"),
        ("PingSource", "tick"),
        ("Service", "auditor"),
    ]:
        assert nodes[key]["ready"] == "True", nodes
        assert nodes[key]["colour"] == READY_RGB, nodes[key]
    assert nodes[("Trigger", "broken")]["ready"] == "False"
    assert nodes[("Trigger", "broken")]["colour"] == NOT_READY_RGB
    assert nodes[("Service", "nowhere")]["missing"]
    assert nodes[("URL", subscriber.url)]
    assert any(kind == "Revision" for kind, _ in nodes), nodes
    await page.screenshot(path=str(shots / "graph.png"))

    # Click a node on the canvas: its YAML and its conditions.
    point = await page.evaluate(CLICK_POINT_JS, "orders")
    await page.mouse.click(point["x"], point["y"])
    await page.wait_for_function(
        "() => document.getElementById('yaml').textContent.includes('name: orders')"
    )
    text = await page.locator("#yaml").inner_text()
    assert "kind: Trigger" in text and "broker: default" in text, text
    assert await page.locator("#object-title").inner_text() == "Trigger default/orders"
    conditions = await page.locator("#conditions tbody tr").all_inner_texts()
    assert any(row.startswith("Ready\tTrue") for row in conditions), conditions
    await page.evaluate("() => window.scrollTo(0, 0)")
    await page.screenshot(path=str(shots / "object.png"))

    # The broken Trigger, chosen from the object list, says why it is not Ready.
    await page.locator("#objects tbody tr", has_text="broken").click()
    await page.wait_for_function(
        "() => document.getElementById('yaml').textContent.includes('name: broken')"
    )
    conditions = await page.locator("#conditions tbody tr").all_inner_texts()
    assert any("nowhere" in row and "False" in row for row in conditions), conditions

    # The live stream of the Broker (clicking it picks its stream), and an event sent into it.
    point = await page.evaluate(CLICK_POINT_JS, "default")
    await page.mouse.click(point["x"], point["y"])
    await page.wait_for_function(
        "() => document.getElementById('yaml').textContent.includes('kind: Broker')"
    )
    assert await page.locator("#events-broker").input_value() == "default"
    await page.wait_for_function(
        "() => document.getElementById('events-state').textContent"
        ".includes('watching broker default/default')"
    )
    await page.fill("#send-form input[name=type]", "com.example.console")
    await page.fill("#send-form textarea[name=data]", '{"from": "the console"}')
    await page.click("#send-form button[type=submit]")
    await page.wait_for_function(
        "() => document.getElementById('send-result').textContent.startsWith('sent ')"
    )
    sent_id = (await page.locator("#send-result").inner_text()).removeprefix("sent ")
    item = page.locator(f"#event-list li[data-id='{sent_id}']")
    await item.wait_for(timeout=15_000)
    assert "com.example.console" in await item.inner_text()
    [received] = await subscriber.wait_for(1)
    assert received.event is not None and received.event.id == sent_id
    await page.screenshot(path=str(shots / "stream.png"), full_page=True)

    # The invoker's replicas of the auditor's Revision.
    rows = await page.locator("#replica-table tbody tr").all_inner_texts()
    assert any(row.startswith("auditor-") and "\t1\t1\t" in row for row in rows), rows

    await page.locator("#replicas").screenshot(path=str(shots / "replicas.png"))
    assert problems == [], "\n".join(problems)  # no CSP violation, no script error

    # Logging out ends the session: the console sends the browser to the login form again.
    async with page.expect_navigation(url=f"{cemesh.url}/console/login"):
        await page.click("#logout")
    await page.goto(f"{cemesh.url}/console/")
    assert page.url == f"{cemesh.url}/console/login"
    await context.close()


def _refusal_page_server() -> tuple[http.server.ThreadingHTTPServer, str]:
    page = b"<!doctype html><html><head><title>same site</title></head><body></body></html>"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture
def same_site_page() -> Iterator[str]:
    """A page on 127.0.0.1 at another port: the same *site* as cemesh, another origin."""
    server, url = _refusal_page_server()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


SAME_SITE_ATTACK_JS = """
async ({target, event, path}) => {
  const results = {};
  const attempt = async (label, url, init) => {
    try {
      const response = await fetch(url, {credentials: "include", ...init});
      results[label] = `status ${response.status} (${response.type})`;
    } catch (error) { results[label] = `blocked: ${error}`; }
  };
  const events = target + "/console/api" + path;
  await attempt("no-cors text/plain event", events,
    {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: event});
  await attempt("cors json event", events,
    {method: "POST", headers: {"Content-Type": "application/json"}, body: event});
  await attempt("no-cors logout", target + "/console/logout", {method: "POST", mode: "no-cors"});
  await attempt("read session", target + "/console/session", {});
  await new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.name = "sink";
    document.body.appendChild(frame);
    const form = document.createElement("form");
    form.method = "POST"; form.action = events; form.enctype = "text/plain"; form.target = "sink";
    const input = document.createElement("input");
    // text/plain sends "name=value": the "=" lands inside a string, the body is the event.
    const cut = event.lastIndexOf("}");
    input.name = event.slice(0, cut) + ', "pad": "'; input.value = '"' + event.slice(cut);
    form.appendChild(input);
    document.body.appendChild(form);
    frame.addEventListener("load", () => resolve(), {once: true});
    form.submit();
    setTimeout(resolve, 5000);
  });
  return results;
}
"""


async def test_a_same_site_page_of_a_logged_in_user_cannot_send_events_or_log_out(
    served_mesh: tuple[CemeshProcess, RecordingSubscriber], browser: Browser, same_site_page: str
) -> None:
    cemesh, subscriber = served_mesh
    context = await browser.new_context()
    page = await context.new_page()
    await log_in(page, cemesh.url, cemesh.token)
    posts: list[tuple[str, int | str]] = []  # the attacker's POSTs to cemesh, and the answers

    def answered(response: Response) -> None:
        if response.request.method == "POST" and response.url.startswith(cemesh.url):
            posts.append((response.url, response.status))

    def failed(request: Request) -> None:  # e.g. refused by the answer's CORP header
        if request.method == "POST" and request.url.startswith(cemesh.url):
            posts.append((request.url, f"failed: {request.failure}"))

    context.on("response", answered)
    context.on("requestfailed", failed)
    attacker = await context.new_page()
    await attacker.goto(same_site_page)
    event = json.dumps({"specversion": "1.0", "id": "x1", "source": "/evil", "type": "evil"})
    results = await asyncio.wait_for(
        attacker.evaluate(
            SAME_SITE_ATTACK_JS, {"target": cemesh.url, "event": event, "path": EVENTS}
        ),
        30,
    )
    report = json.dumps({"results": results, "posts": posts}, indent=1)
    assert results["cors json event"].startswith("blocked"), report  # no CORS preflight granted
    assert results["read session"].startswith("blocked"), report
    # SameSite=Strict does not separate ports: the form post reached the console with the
    # cookie and was refused for its Origin (the no-cors fetches got the same 403, which the
    # browser then withheld from the page: the answer's Cross-Origin-Resource-Policy).
    assert (f"{cemesh.url}/console/api{EVENTS}", 403) in posts, report
    assert all(
        s == 403 or "BLOCKED_BY_RESPONSE" in str(s) or s == "failed: net::ERR_FAILED"
        for _, s in posts
    ), report  # ERR_FAILED: the JSON post's preflight, refused
    # Still logged in, and nothing arrived.
    await page.reload()
    assert page.url == f"{cemesh.url}/console/"
    await asyncio.sleep(0.5)  # a delivery that should not happen: give it a moment to show
    assert subscriber.received == [], report
    await context.close()


async def test_without_a_session_the_console_and_its_endpoints_refuse(
    served_mesh: tuple[CemeshProcess, RecordingSubscriber],
) -> None:
    cemesh, subscriber = served_mesh
    async with httpx.AsyncClient(base_url=cemesh.url, timeout=10) as anonymous:
        page = await anonymous.get("/console/")
        assert page.status_code == 303 and page.headers["location"] == "/console/login"
        for path in ("/console/session", "/console/static/console.js", f"/console/api{TOPOLOGY}"):
            assert (await anonymous.get(path)).status_code == 401, path
        posted = await anonymous.post(f"/console/api{EVENTS}", json={})
        assert posted.status_code == 401
        forged = {"Cookie": cookie_for("a-guess")}
        assert (await anonymous.get(f"/console/api{TOPOLOGY}", headers=forged)).status_code == 401
        # The API itself never takes the console's cookie.
        session = {"Cookie": cookie_for(cemesh.token)}
        assert (await anonymous.get(TOPOLOGY, headers=session)).status_code == 401
        # The login form takes posts from cemesh's own page only.
        login = await anonymous.post(
            "/console/login",
            data={"token": cemesh.token},
            headers={"Origin": "http://127.0.0.1:1"},
        )
        assert login.status_code == 403 and "set-cookie" not in login.headers

        # With a session: reads pass, writes need our Origin and the CSRF token.
        csrf = (await anonymous.get("/console/session", headers=session)).json()["csrf"]
        topology = await anonymous.get(f"/console/api{TOPOLOGY}", headers=session)
        assert topology.status_code == 200 and topology.json()["nodes"]
        event = {"specversion": "1.0", "id": "c1", "source": "/t", "type": "t"}
        own = {**session, "Origin": cemesh.url}
        for headers in (own, {**session, "Origin": "http://localhost:1", "x-cemesh-csrf": csrf}):
            refused = await anonymous.post(f"/console/api{EVENTS}", json=event, headers=headers)
            assert refused.status_code == 403, refused.text
        bad = await anonymous.post(
            f"/console/api{EVENTS}", json={"id": "c2"}, headers={**own, "x-cemesh-csrf": csrf}
        )
        assert bad.status_code == 400 and "specversion" in bad.json()["message"]
        delete = await anonymous.delete(
            f"/console/api{TOPOLOGY}", headers={**own, "x-cemesh-csrf": csrf}
        )
        assert delete.status_code == 405
        sent = await anonymous.post(
            f"/console/api{EVENTS}", json=event, headers={**own, "x-cemesh-csrf": csrf}
        )
        assert sent.status_code == 202, sent.text
        [received] = await subscriber.wait_for(1)
        assert received.event is not None and received.event.id == "c1"
