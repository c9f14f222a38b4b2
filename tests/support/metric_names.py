"""The metric names the suite exports, and the metric names a PromQL expression uses.

Exported: the three services' apps are built (nothing connects) and their registries rendered — the
``# TYPE`` lines name every family, also those without samples yet; a family's sample names follow
from its type (``_total`` for counters, ``_bucket``/``_count``/``_sum`` for histograms). Prometheus
adds ``up`` and ``ALERTS`` itself."""

from __future__ import annotations

import re
import tempfile

from devtools.migrate import service_app

SERVICES = ("planning", "consent", "notify")
PROMETHEUS_OWN = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "untyped": ("",),
}


def names_in_exposition(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + s for s in _SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def exported_metric_names() -> dict[str, set[str]]:
    """service → the metric (sample) names its /metrics can serve."""
    found: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for service in SERVICES:
            app = service_app(service, data_dir=f"{tmp}/{service}")
            found[service] = names_in_exposition(app.state.runtime.metrics.render().decode())
    return found


_FUNCTIONS_AND_KEYWORDS = frozenset(
    "sum min max avg count stddev stdvar topk bottomk quantile count_values group by without on "
    "ignoring group_left group_right and or unless bool offset time rate irate increase delta "
    "histogram_quantile max_over_time min_over_time avg_over_time label_values vector scalar "
    "absent absent_over_time clamp_min clamp_max abs ceil floor round sort sort_desc inf nan".split()
)


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels or variables)."""
    text = re.sub(r"label_values\(\s*([^,()]+?)\s*,[^)]*\)", r"\1", expr)  # Grafana: (metric, label)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    tokens = re.findall(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text)
    return {
        name
        for name, call in tokens
        if not call and name not in _FUNCTIONS_AND_KEYWORDS and not re.fullmatch(r"\d+[smhdwy]", name)
    }
