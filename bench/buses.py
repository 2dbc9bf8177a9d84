"""Per-bus benchmark: cemesh end to end on each bus beside that bus's raw client rate (issue 3).

For every bus asked for (``--buses kafka,kafka-confluent,nats,redis,pubsub``), in turn, all on
127.0.0.1:

1. **Server**: the test launcher of ``tests/support/servers`` (Tansu for kafka, nats-server with
   JetStream, redis-server, the Pub/Sub emulator) in a temp dir on a free port; stopped (its PID)
   in a ``finally``.
2. **Raw client rate**, measured in the same run: publish ``--events`` messages of ``--size``
   bytes with the plain client library, every send in flight at once (aiokafka ``send`` futures,
   nats-py JetStream ``publish_async``, redis-py ``XADD`` pipelined, google-cloud-pubsub
   ``publish`` futures), wait for every ack; then consume and ack them all (aiokafka group
   consumer + commit, JetStream pull consumer + ack, ``XREADGROUP`` + ``XACK``, streaming pull +
   ack). The two phases run one after the other, so the end-to-end rate is
   ``N / (publish time + consume time)``: sequential, not a concurrent produce+consume run.
   Then, for kafka, nats and redis, the same client with publish and consume overlapping and
   ``--connections`` publishers each waiting for its ack, batched as the adapter batches
   (:mod:`bench.raw_overlapped`); the ratio is taken over that figure (issue 14: the sequential one
   flattered cemesh), and both are printed.
3. **cemesh on that bus**: ``cemesh serve`` with ``CEMESH_DEFAULT_CHANNEL`` set to the bus's kind
   and its server address, SQLite in the temp dir, ``LOG_LEVEL`` WARNING; a Broker and one Trigger
   to ``bench/subscriber.py``; wrk closed loop (``--connections``, ``--duration`` seconds) POSTing
   a 1 KiB binary-mode CloudEvent, after ``--warmup`` seconds of warm-up. Reported: ingress req/s,
   delivered events/s at the subscriber (first to last delivery, the backlog included, waiting
   at most ``--drain-timeout`` seconds for it), lost and duplicated counts. The cemesh side is
   ``bench/e2e.py``'s :class:`~bench.e2e.Bench`, reused as is.

``kafka-confluent`` is the Kafka bus again with ``CEMESH_KAFKA_DRIVER=confluent`` (librdkafka):
its raw overlapped figure is librdkafka's, through the adapter's own asyncio bridges. The two
Kafka rows are judged against the better raw Kafka client of the run (``ceiling/s``), so a
driver never passes by being compared with a slower client.

Prints a table (bus, raw rates, the ceiling, cemesh delivered/s, ratio, goal, pass/fail; the
goal, cemesh >= 1/2 of the ceiling (issue 14), holds on kafka, kafka-confluent and nats), then
CPU per event: cemesh, its bus server and the load tools (wrk + subscriber) per delivered event,
and the raw client's own CPU (this process, client threads included) and its server's per
event published and consumed in the overlapped run; then, as the last line of stdout, the JSON
(also written to ``--json FILE``). A bus whose server or client fails is reported with its
error; the others still run.

Run: ``make bench-buses`` or ``.venv/bin/python bench/buses.py [--buses kafka,nats]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*`/`tests.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest

from bench.e2e import TRIGGER_MANIFEST, Bench, Options
from bench.loadgen import event_body, find_wrk
from bench.raw_overlapped import RAW_OVERLAPPED

GOAL_RATIO = 1 / 2
GOAL_BUSES = frozenset({"kafka", "kafka-confluent", "nats"})
RAW_TIMEOUT = 90.0  # seconds one raw phase (publish or consume) may take
TRIGGER_TIMEOUT = 60.0  # a Kafka group join can take several seconds


@dataclass(frozen=True)
class RawResult:
    """The plain client's sequential publish-then-consume run."""

    events: int
    publish_s: float
    consume_s: float

    @property
    def publish_rate(self) -> float:
        return self.events / self.publish_s

    @property
    def consume_rate(self) -> float:
        return self.events / self.consume_s

    @property
    def e2e_rate(self) -> float:
        return self.events / (self.publish_s + self.consume_s)


# -- raw clients --------------------------------------------------------------------------------


async def raw_kafka(bootstrap: str, count: int, payload: bytes) -> RawResult:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = "bench-raw"
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=1
    )
    await producer.start()
    try:
        start = time.perf_counter()
        futures = [await producer.send(topic, payload) for _ in range(count)]
        await asyncio.gather(*futures)
        published = time.perf_counter() - start
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="bench-raw",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=200,
    )
    await consumer.start()
    try:
        got, start = 0, 0.0
        while got < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for records in batches.values():
                if not start:  # the group join is not the client's consuming rate
                    start = time.perf_counter()
                got += len(records)
            if batches:
                await consumer.commit()  # the ack: one commit per fetched batch
        consumed = time.perf_counter() - start
    finally:
        await consumer.stop()
    return RawResult(count, published, consumed)


async def raw_nats(url: str, count: int, payload: bytes) -> RawResult:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="BENCHRAW", subjects=["bench.raw"])
        start = time.perf_counter()
        for _ in range(count):
            await js.publish_async("bench.raw", payload)  # waits only when 4,000 are pending
        await js.publish_async_completed()
        published = time.perf_counter() - start

        sub = await js.pull_subscribe("bench.raw", durable="bench-raw")
        got = 0
        start = time.perf_counter()
        while got < count:
            for message in await sub.fetch(500, timeout=5):
                await message.ack()  # fire and forget, as a JetStream consumer usually acks
                got += 1
        await nc.flush()
        consumed = time.perf_counter() - start
    finally:
        await nc.close()
    return RawResult(count, published, consumed)


async def raw_redis(url: str, count: int, payload: bytes) -> RawResult:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    stream, group, batch = "bench-raw", "bench-raw", 500
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        start = time.perf_counter()
        for offset in range(0, count, batch):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(batch, count - offset)):
                pipe.xadd(stream, {"data": payload})
            await pipe.execute()
        published = time.perf_counter() - start

        got = 0
        start = time.perf_counter()
        while got < count:
            reply = await client.xreadgroup(group, "c1", {stream: ">"}, count=batch, block=1000)
            for _name, entries in reply or []:
                if entries:
                    await client.xack(stream, group, *(entry_id for entry_id, _ in entries))
                    got += len(entries)
        consumed = time.perf_counter() - start
    finally:
        await client.aclose()
    return RawResult(count, published, consumed)


def _raw_pubsub_sync(host: str, count: int, payload: bytes) -> RawResult:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import pubsub_v1

    # The client libraries find the emulator through this variable (this process only).
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    options = ClientOptions(api_endpoint=host)
    credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.005),
        credentials=credentials,
        client_options=options,
    )
    subscriber = pubsub_v1.SubscriberClient(credentials=credentials, client_options=options)
    topic = publisher.topic_path("bench", "bench-raw")
    subscription = subscriber.subscription_path("bench", "bench-raw")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
    try:
        start = time.perf_counter()
        futures = [publisher.publish(topic, payload) for _ in range(count)]
        for future in futures:
            future.result(timeout=RAW_TIMEOUT)
        published = time.perf_counter() - start

        got = 0
        lock = threading.Lock()
        done = threading.Event()

        def callback(message: Any) -> None:
            nonlocal got
            message.ack()
            with lock:
                got += 1
                if got >= count:
                    done.set()

        start = time.perf_counter()
        flow = pubsub_v1.types.FlowControl(max_messages=2000)
        pulling = subscriber.subscribe(subscription, callback, flow_control=flow)
        finished = done.wait(RAW_TIMEOUT)
        consumed = time.perf_counter() - start
        pulling.cancel()
        with contextlib.suppress(Exception):
            pulling.result(timeout=10)
        if not finished:
            raise TimeoutError(f"pubsub raw consume: {got} of {count} in {RAW_TIMEOUT:g}s")
    finally:
        publisher.stop()
        subscriber.close()
    return RawResult(count, published, consumed)


async def raw_pubsub(host: str, count: int, payload: bytes) -> RawResult:
    return await asyncio.to_thread(_raw_pubsub_sync, host, count, payload)


# -- the buses ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusKind:
    name: str
    channel: str  # CEMESH_DEFAULT_CHANNEL
    launcher: str  # module under tests.support.servers ("": no server, the in-memory bus)
    address: Callable[[Any], str]  # the server's address, as the client and cemesh take it
    setting: str  # the cemesh setting that takes it
    raw: Callable[[str, int, bytes], Awaitable[RawResult]] | None
    env: tuple[tuple[str, str], ...] = ()  # more settings for cemesh (a driver, ...)
    family: str = ""  # rows of one server compare with the best raw client of the family


BUSES: dict[str, BusKind] = {
    # The reference for CPU per event: cemesh's own work (HTTP in, filter, HTTP out) without a
    # server; Kafka's CPU goal is this figure plus the raw client's, measured in the same run.
    "memory": BusKind("memory", "InMemoryChannel", "", lambda _: "", "", None),
    "kafka": BusKind(
        "kafka",
        "KafkaChannel",
        "kafka",
        lambda s: s.bootstrap_servers,
        "CEMESH_KAFKA_BOOTSTRAP_SERVERS",
        raw_kafka,
        (("CEMESH_KAFKA_DRIVER", "aiokafka"),),
        "kafka",
    ),
    # The same bus on librdkafka (confluent-kafka): the raw overlapped figure is librdkafka's.
    "kafka-confluent": BusKind(
        "kafka-confluent",
        "KafkaChannel",
        "kafka",
        lambda s: s.bootstrap_servers,
        "CEMESH_KAFKA_BOOTSTRAP_SERVERS",
        raw_kafka,
        (("CEMESH_KAFKA_DRIVER", "confluent"),),
        "kafka",
    ),
    "nats": BusKind(
        "nats", "NatsJetStreamChannel", "nats", lambda s: s.url, "CEMESH_NATS_URL", raw_nats
    ),
    "redis": BusKind(
        "redis", "RedisStreamChannel", "redis", lambda s: s.url, "CEMESH_REDIS_URL", raw_redis
    ),
    "pubsub": BusKind(
        "pubsub",
        "PubSubChannel",
        "pubsub",
        lambda s: s.host,
        "CEMESH_PUBSUB_EMULATOR_HOST",
        raw_pubsub,
    ),
}


@contextlib.contextmanager
def bus_environment(kind: BusKind, address: str) -> Iterator[None]:
    """``CEMESH_DEFAULT_CHANNEL`` and the bus address for the cemesh started inside (Bench copies
    ``os.environ`` when it starts cemesh); the previous values come back afterwards."""
    wanted = {"CEMESH_DEFAULT_CHANNEL": kind.channel, **dict(kind.env)}
    if kind.setting:
        wanted[kind.setting] = address
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def log(message: str) -> None:
    print(f"[buses {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_cemesh(bench: Bench) -> dict[str, Any]:
    """Broker + Trigger to the lean subscriber, then one closed-loop wrk run (e2e.py's phases)."""
    cemesh_url, subscriber_url = bench.start_cemesh_and_subscriber()
    bench.apply(cemesh_url, TRIGGER_MANIFEST.format(uri=f"{subscriber_url}/"), "trigger")
    # Live once an event sent now reaches the subscriber.
    bench.wait_for(
        lambda: bench.probe(cemesh_url) == 202 and bench.received(subscriber_url) > 0,
        "Trigger bench to deliver",
        timeout=TRIGGER_TIMEOUT,
    )
    return bench.end_to_end(cemesh_url, subscriber_url, rate=0.0)


def run_bus(kind: BusKind, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One bus: its server, the raw client, then cemesh on it; every process stopped after."""
    from importlib import import_module

    result: dict[str, Any] = {"bus": kind.name, "channel": kind.channel}
    if kind.raw is None:  # the in-memory bus: cemesh alone
        return run_memory(kind, args, workdir, result)
    launcher = import_module(f"tests.support.servers.{kind.launcher}")
    server_dir = workdir / f"{kind.name}-server"
    server_dir.mkdir()
    log(f"{kind.name}: starting the server")
    try:
        server = launcher.launch(server_dir)
    except pytest.fail.Exception as exc:  # the launcher fails the "test": this bus only
        result["error"] = f"server did not start: {exc}"
        return result
    bench = Bench(bench_options(args, kind.name), workdir / f"{kind.name}-cemesh")
    bench.workdir.mkdir()
    try:
        address = kind.address(server)
        log(f"{kind.name}: raw client, {args.events:,} events of {args.size} B")
        try:
            raw = asyncio.run(
                asyncio.wait_for(
                    kind.raw(address, args.events, event_body(args.size)), RAW_TIMEOUT * 2
                )
            )
            result["raw"] = {
                "events": raw.events,
                "publish_per_s": raw.publish_rate,
                "consume_per_s": raw.consume_rate,
                "e2e_per_s": raw.e2e_rate,
                "mode": "sequential: N / (publish time + consume time)",
            }
        except Exception as exc:  # reported; cemesh still measured
            result["raw_error"] = f"{type(exc).__name__}: {exc}"
        overlapped = RAW_OVERLAPPED.get(kind.name)
        if overlapped is not None and "raw" in result:
            log(f"{kind.name}: raw client, overlapped, {args.connections} publishers")
            try:
                cpu, server_cpu = time.process_time(), _cpu_seconds(server.process.pid)
                seconds = asyncio.run(
                    overlapped(address, args.events, event_body(args.size), args.connections)
                )
                result["raw"]["overlapped_e2e_per_s"] = args.events / seconds
                # The raw client's own CPU (this process, librdkafka's threads included) and
                # the server's, per event published and consumed.
                result["raw"]["client_cpu_us_per_event"] = (
                    (time.process_time() - cpu) / args.events * 1e6
                )
                result["raw"]["server_cpu_us_per_event"] = (
                    (_cpu_seconds(server.process.pid) - server_cpu) / args.events * 1e6
                )
            except Exception as exc:  # reported; the sequential figure stays
                result["raw_error"] = f"overlapped: {type(exc).__name__}: {exc}"
        log(f"{kind.name}: cemesh ({kind.channel}), wrk {args.duration:g}s")
        try:
            with bus_environment(kind, address):
                before = _cpu_seconds(server.process.pid)
                result["cemesh"] = measure_cemesh(bench)
                # The bus server shares the cores with cemesh: its CPU per delivered event says
                # how much of the machine is left for cemesh.
                used = _cpu_seconds(server.process.pid) - before
                delivered = result["cemesh"].get("delivered") or 0
                if delivered:
                    result["cemesh"]["server_cpu_us_per_event"] = used / delivered * 1e6
        except Exception as exc:  # reported with cemesh's log
            tail = bench.cemesh.log_tail() if hasattr(bench, "cemesh") else ""
            result["cemesh_error"] = f"{type(exc).__name__}: {exc}\n{tail}"
    finally:
        bench.stop_all()
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for path in [*bench.workdir.glob("*.log"), *server_dir.glob("*.log")]:
                (args.keep_logs / f"{kind.name}-{path.name}").write_bytes(path.read_bytes())
        server.stop()
    return result


def run_memory(
    kind: BusKind, args: argparse.Namespace, workdir: Path, result: dict[str, Any]
) -> dict[str, Any]:
    """cemesh on the in-memory bus, as on the others (the CPU reference, no raw client)."""
    bench = Bench(bench_options(args, kind.name), workdir / f"{kind.name}-cemesh")
    bench.workdir.mkdir()
    log(f"{kind.name}: cemesh ({kind.channel}), wrk {args.duration:g}s")
    try:
        with bus_environment(kind, ""):
            result["cemesh"] = measure_cemesh(bench)
    except Exception as exc:  # reported with cemesh's log
        tail = bench.cemesh.log_tail() if hasattr(bench, "cemesh") else ""
        result["cemesh_error"] = f"{type(exc).__name__}: {exc}\n{tail}"
    finally:
        bench.stop_all()
    return result


def bench_options(args: argparse.Namespace, bus: str) -> Options:
    return Options(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        rate=0.0,
        drain_timeout=args.drain_timeout,
        rounds=1,
        json_path=None,
        strict=False,
        keep_logs=None,
        profile=None if args.profile is None else args.profile / bus,  # one directory per bus
        cemesh_cmd=None,
    )


# -- verdicts and output ------------------------------------------------------------------------


def _raw_ceiling(raw: dict[str, Any]) -> float:
    """The raw rate cemesh is compared with: overlapped where measured, else sequential."""
    return float(raw.get("overlapped_e2e_per_s") or raw["e2e_per_s"])


def family_ceilings(results: list[dict[str, Any]]) -> None:
    """Give each row ``ceiling``: its raw rate, or for rows of a family (Kafka's two drivers)
    the best raw client of that family in this run, so a driver is never judged against a
    slower client than the best one measured."""
    best: dict[str, float] = {}
    for result in results:
        family = BUSES[result["bus"]].family
        if family and "raw" in result:
            best[family] = max(best.get(family, 0.0), _raw_ceiling(result["raw"]))
    for result in results:
        if "raw" in result:
            family = BUSES[result["bus"]].family
            result["ceiling_per_s"] = best.get(family) or _raw_ceiling(result["raw"])


def verdict(result: dict[str, Any]) -> tuple[float | None, str]:
    """cemesh delivered/s over the raw e2e rate, and pass/FAIL (or "" where there is no goal)."""
    raw, cemesh = result.get("raw"), result.get("cemesh")
    if raw is None or cemesh is None:
        return None, "FAIL" if result["bus"] in GOAL_BUSES else "-"
    ceiling = result.get("ceiling_per_s") or _raw_ceiling(raw)
    ratio = cemesh["delivered_rate"] / ceiling if ceiling else 0.0
    if result["bus"] not in GOAL_BUSES:
        return ratio, "-"
    clean = cemesh["lost"] == 0 and cemesh["duplicated"] == 0 and cemesh["drained"]
    if ratio >= GOAL_RATIO and clean:
        return ratio, "pass"
    cpu_goal = result.get("cpu_goal")
    if cpu_goal is not None and cpu_goal["met"] and clean:
        return ratio, "pass (CPU)"
    return ratio, "FAIL"


def cpu_goals(results: list[dict[str, Any]]) -> None:
    """Give each Kafka row ``cpu_goal``: issue 14's alternative goal for a CPU-bound bus, cemesh's
    CPU per event at most its in-memory figure of this run plus the raw client's own."""
    memory = next((r for r in results if r["bus"] == "memory" and "cemesh" in r), None)
    if memory is None:
        return
    reference = memory["cemesh"]["cpu_us_per_event"].get("cemesh")
    for result in results:
        if BUSES[result["bus"]].family != "kafka" or "cemesh" not in result:
            continue
        client = (result.get("raw") or {}).get("client_cpu_us_per_event")
        cemesh = result["cemesh"]["cpu_us_per_event"].get("cemesh")
        if reference is None or client is None or cemesh is None:
            continue
        limit = reference + client
        result["cpu_goal"] = {
            "cemesh_us": cemesh,
            "memory_us": reference,
            "raw_client_us": client,
            "limit_us": limit,
            "met": cemesh <= limit,
        }


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        "bus",
        "raw pub/s",
        "raw con/s",
        "raw e2e/s",
        "raw overlap/s",
        "ceiling/s",
        "ingress req/s",
        "delivered/s",
        "ratio",
        "lost/dup",
        "drained",
        "goal",
        "result",
    )
    rows = [header]
    for result in results:
        raw, cemesh = result.get("raw"), result.get("cemesh")
        ratio, outcome = verdict(result)
        no_raw = "-" if BUSES[result["bus"]].raw is None else "error"
        rows.append(
            (
                result["bus"],
                f"{raw['publish_per_s']:,.0f}" if raw else no_raw,
                f"{raw['consume_per_s']:,.0f}" if raw else "-",
                f"{raw['e2e_per_s']:,.0f}" if raw else "-",
                f"{raw['overlapped_e2e_per_s']:,.0f}"
                if raw and "overlapped_e2e_per_s" in raw
                else "-",
                f"{result['ceiling_per_s']:,.0f}" if "ceiling_per_s" in result else "-",
                f"{cemesh['ingress_rate']:,.0f}" if cemesh else "error",
                f"{cemesh['delivered_rate']:,.0f}" if cemesh else "-",
                f"{ratio:.0%}" if ratio is not None else "-",
                f"{cemesh['lost']}/{cemesh['duplicated']}" if cemesh else "-",
                ("yes" if cemesh["drained"] else "NO") if cemesh else "-",
                f">= {GOAL_RATIO:.0%}" if result["bus"] in GOAL_BUSES else "(info)",
                outcome,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    print_cpu(results)
    print_cpu_goals(results)
    for result in results:
        for key in ("error", "raw_error", "cemesh_error"):
            if key in result:
                print(f"{result['bus']} {key}: {result[key]}")


def print_cpu(results: list[dict[str, Any]]) -> None:
    """CPU per event: cemesh, its bus server, the load tools; the raw client and its server."""
    print("CPU per delivered event (us): cemesh | bus server | wrk + subscriber ; raw client |")
    print("  raw's bus server (per event published and consumed, overlapped run)")
    for result in results:
        cemesh, raw = result.get("cemesh") or {}, result.get("raw") or {}
        per = cemesh.get("cpu_us_per_event") or {}
        tools = (per.get("wrk") or 0.0) + (per.get("subscriber") or 0.0)

        def cell(value: float | None) -> str:
            return f"{value:,.0f}" if value is not None else "-"

        print(
            f"  {result['bus']:<16} {cell(per.get('cemesh'))} | "
            f"{cell(cemesh.get('server_cpu_us_per_event'))} | {cell(tools if per else None)} ; "
            f"{cell(raw.get('client_cpu_us_per_event'))} | "
            f"{cell(raw.get('server_cpu_us_per_event'))}"
        )


def print_cpu_goals(results: list[dict[str, Any]]) -> None:
    """Kafka's CPU goal, one line per Kafka row measured beside the in-memory bus."""
    for result in results:
        goal = result.get("cpu_goal")
        if goal is not None:
            print(
                f"  {result['bus']} CPU goal: cemesh {goal['cemesh_us']:,.0f} us <= in-memory "
                f"{goal['memory_us']:,.0f} + raw client {goal['raw_client_us']:,.0f} = "
                f"{goal['limit_us']:,.0f} us: {'pass' if goal['met'] else 'FAIL'} "
                f"({goal['cemesh_us'] / goal['limit_us'] - 1:+.0%})"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="cemesh end to end on each bus beside the bus's raw client rate."
    )
    parser.add_argument(
        "--buses",
        default="memory,kafka,kafka-confluent,nats,redis,pubsub",
        help="comma-separated",
    )
    parser.add_argument("--events", type=int, default=20_000, help="raw client events")
    parser.add_argument("--size", type=int, default=1024, help="raw event bytes")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk load")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up load")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument(
        "--drain-timeout", type=float, default=20.0, help="max seconds to wait for the backlog"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy logs to this dir")
    parser.add_argument(
        "--profile", type=Path, default=None, help="record py-spy profiles of cemesh here"
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.buses.split(",") if name.strip()]
    unknown = [name for name in names if name not in BUSES]
    if unknown:
        parser.error(f"unknown bus {', '.join(unknown)} (known: {', '.join(BUSES)})")
    args.bus_names = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    find_wrk()
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cemesh-bench-buses-") as tmp:
        for name in args.bus_names:
            results.append(run_bus(BUSES[name], args, Path(tmp)))
    elapsed = time.monotonic() - started
    family_ceilings(results)
    cpu_goals(results)
    for result in results:
        ratio, outcome = verdict(result)
        result["ratio"], result["result"] = ratio, outcome
    passed = all(result["result"] != "FAIL" for result in results)
    print_table(results)
    print(
        f"({elapsed:.0f} s in all; raw e2e = N / (publish + consume time), run one after the "
        f"other, every publish in flight at once (the old figure); raw overlap = N / (first "
        f"publish to last ack) with publish and consume overlapping and {args.connections} "
        "publishers each waiting for its ack, batched as the adapter batches (bench/"
        "raw_overlapped.py): the ratio is over it where measured; delivered/s = subscriber's "
        "first to last delivery, backlog included)"
    )
    document = {
        "setup": {
            "events": args.events,
            "size": args.size,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "drain_timeout_s": args.drain_timeout,
            "cpus": os.cpu_count(),
            "goal_ratio": GOAL_RATIO,
            "goal_buses": sorted(GOAL_BUSES),
        },
        "buses": results,
        "passed": passed,
        "elapsed_s": elapsed,
    }
    text = json.dumps(document, sort_keys=True, default=str)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
