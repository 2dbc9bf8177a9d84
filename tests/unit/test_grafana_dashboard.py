"""The Grafana dashboard in deploy/grafana/ is valid JSON and every metric its panels query is
one cemesh exposes (issue 15 item 1): a renamed metric cannot leave a panel silently empty."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics_core import Metric

from broker.core.metrics import Metrics
from broker.dataplane.dispatch.dispatcher import BACKLOG_METRIC
from broker.features.serving.invoker_metrics import InvokerMetrics

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "cemesh-data-plane.json"
METRIC_NAME = re.compile(r"\bcemesh_[a-z_]+")
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def exposed_names() -> set[str]:
    """Every sample name cemesh can expose: its own families, the dispatcher's backlog and the
    invoker's families (made from empty state; the names do not depend on the state)."""
    families: list[Metric] = list(Metrics().collect())
    families += InvokerMetrics(list, backend=None).families()  # type: ignore[arg-type]
    return {family.name for family in families} | {BACKLOG_METRIC}


def test_every_metric_in_the_dashboard_exists() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {m for expr in exprs for m in METRIC_NAME.findall(expr)}
    assert queried, "the dashboard queries no cemesh metric"
    known = exposed_names()
    for name in sorted(queried):
        base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
        assert base in known, f"{name} in {DASHBOARD.name} is not a metric cemesh exposes"
