"""Server-rendered HTML of the privacy budget dashboard: tables and an SVG chart, no JS library.

Everything shown comes from the ledger or XCom, and dataset, DAG, run and task names are user
input: the templates are rendered with Jinja2 autoescaping on, so every value is HTML-escaped
(text and attributes alike) unless a template marks it safe, which none does. Everything is
in one response (inline CSS, inline SVG) because the page is framed by the Airflow UI and
needs no further authenticated request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2

from airflow_privacy.plugins.budget_chart import SpendSeries, chart_geometry, fmt_eps, fmt_time


def fmt_delta(value: float | None) -> str:
    if value is None:
        return "–"
    return "0" if value == 0 else f"{value:.3g}"


def fmt_day(value: str | None) -> str:
    """A forecast: the day (UTC) a cap is projected to be reached, or "never"."""
    if value is None or value == "never":
        return "never"
    return fmt_time(value)[:10]


_TEMPLATES = {
    "macros.html": """
{%- macro chart(geo, title) -%}
<figure class="chart">
<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-labelledby="chart-title"
     viewBox="0 0 {{ geo.width }} {{ geo.height }}" width="{{ geo.width }}" height="{{ geo.height }}">
  <title id="chart-title">{{ title }}</title>
  {%- for t in geo.y_ticks %}
  <line class="grid" x1="{{ geo.left }}" x2="{{ geo.right }}" y1="{{ t.y }}" y2="{{ t.y }}"/>
  <text class="tick" x="{{ geo.left - 6 }}" y="{{ t.y + 4 }}" text-anchor="end">{{ t.label }}</text>
  {%- endfor %}
  {%- for t in geo.x_ticks %}
  <text class="tick" x="{{ t.x }}" y="{{ geo.bottom + 18 }}" text-anchor="middle">{{ t.label }}</text>
  {%- endfor %}
  <line class="axis" x1="{{ geo.left }}" x2="{{ geo.right }}" y1="{{ geo.bottom }}" y2="{{ geo.bottom }}"/>
  <line class="axis" x1="{{ geo.left }}" x2="{{ geo.left }}" y1="{{ geo.top }}" y2="{{ geo.bottom }}"/>
  <text class="tick" x="14" y="{{ geo.top + 4 }}" transform="rotate(-90 14 {{ geo.top + 4 }})" text-anchor="end">worst-case ε</text>
  {%- for line in geo.lines %}
  <g class="series" data-dataset="{{ line.dataset }}" data-spent="{{ line.spent }}">
    {%- if line.cap_points %}
    <polyline class="cap" fill="none" points="{{ line.cap_points }}" stroke="{{ line.color }}"><title>{{ line.dataset }}: cap ε over time, now {{ line.cap }}</title></polyline>
    {%- else %}
    <line class="cap" x1="{{ geo.left }}" x2="{{ geo.right }}" y1="{{ line.cap_y }}" y2="{{ line.cap_y }}" stroke="{{ line.color }}"><title>{{ line.dataset }}: cap ε = {{ line.cap }}</title></line>
    {%- endif %}
    {%- if line.points %}
    <polyline fill="none" stroke="{{ line.color }}" stroke-width="2" points="{{ line.points }}"/>
    {%- endif %}
    {%- for m in line.markers %}
    <circle cx="{{ m.x }}" cy="{{ m.y }}" r="3.5" fill="{{ line.color }}"><title>{{ line.dataset }} · {{ m.time }} · spent ε = {{ m.spent }}</title></circle>
    {%- endfor %}
  </g>
  {%- endfor %}
</svg>
<figcaption class="legend">
  {%- for line in geo.lines %}
  <span class="legend-item"><span class="swatch" style="background: {{ line.color }}"></span>{{ line.dataset }}: ε {{ line.spent }} of {{ line.cap }}</span>
  {%- endfor %}
  <span class="legend-item muted">dashed: cap as it was over time</span>
</figcaption>
</figure>
{%- endmacro %}

{%- macro usage(s) -%}
{%- set pct = 0 if s.cap_epsilon <= 0 else [100, (100 * s.spent_epsilon / s.cap_epsilon)] | min -%}
<span class="bar" title="{{ '%.1f' | format(pct) }}% of the cap spent"><span class="fill{% if pct >= 100 %} full{% elif pct >= 80 %} high{% endif %}" style="width: {{ '%.1f' | format(pct) }}%"></span></span>
{%- endmacro %}
""",
    "base.html": """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{{ title }}</title>
<style>
  :root { color-scheme: light dark; --fg: #1a202c; --muted: #5a6472; --line: #d5dae1; --bg: #ffffff;
          --head: #f3f5f8; --link: #0060a8; --ok: #2f855a; --warn: #c05621; --bad: #c53030; }
  @media (prefers-color-scheme: dark) {
    :root { --fg: #e2e8f0; --muted: #a0aec0; --line: #3b4452; --bg: #1a202c; --head: #242c3a; --link: #63b3ed; }
  }
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
         color: var(--fg); background: var(--bg); margin: 16px 24px; }
  h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
  a { color: var(--link); text-decoration: none; } a:hover { text-decoration: underline; }
  .muted { color: var(--muted); } .crumbs { margin-bottom: 12px; } .nowrap { white-space: nowrap; }
  table { border-collapse: collapse; width: 100%; max-width: 1200px; }
  th, td { border-bottom: 1px solid var(--line); padding: 6px 10px; text-align: left; vertical-align: top; }
  th { background: var(--head); font-weight: 600; white-space: nowrap; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  td.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; word-break: break-all; }
  .bar { display: inline-block; width: 120px; height: 10px; border-radius: 5px; background: var(--line); overflow: hidden; vertical-align: middle; }
  .bar .fill { display: block; height: 100%; background: var(--ok); } .bar .fill.high { background: var(--warn); } .bar .fill.full { background: var(--bad); }
  .cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0 4px; }
  .card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 120px; }
  .card .v { font-size: 18px; font-weight: 600; } .card .k { color: var(--muted); font-size: 12px; }
  .chart { margin: 8px 0; max-width: 100%; overflow-x: auto; } .chart svg { max-width: 100%; height: auto; }
  .chart .grid { stroke: var(--line); stroke-width: 1; } .chart .axis { stroke: var(--muted); stroke-width: 1; }
  .chart .cap { stroke-dasharray: 6 4; stroke-width: 1.5; opacity: .8; }
  .chart .tick { fill: var(--muted); font-size: 11px; }
  .legend { display: flex; gap: 16px; flex-wrap: wrap; margin-top: 4px; }
  .swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
  .empty { border: 1px dashed var(--line); border-radius: 6px; padding: 16px; color: var(--muted); max-width: 1200px; }
  .status-released { color: var(--ok); } .status-charged { color: var(--warn); }
</style>
</head>
<body>
{% block body %}{% endblock %}
<script>
  // Framed by the Airflow UI (same origin, but the sandbox forbids navigating the top window):
  // hand links to Airflow pages to the UI's router instead of loading the UI inside the frame.
  (function () {
    if (window.top === window) { return; }
    document.addEventListener("click", function (event) {
      var link = event.target.closest && event.target.closest("a[data-airflow-ui]");
      if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) { return; }
      try {
        window.top.history.pushState(null, "", link.href);
        window.top.dispatchEvent(new PopStateEvent("popstate", { state: null }));
        event.preventDefault();
      } catch (err) { /* not same-origin: follow the link inside the frame */ }
    });
  })();
</script>
</body>
</html>
""",
    "overview.html": """{% extends "base.html" %}{% import "macros.html" as m %}
{% block body %}
<h1>Privacy budget</h1>
<div class="muted">Differential-privacy spend per dataset, from the budget ledger. Worst-case ε is what one person of the population can lose: the dataset's own releases composed with those of the one partition the person is in (indented below its parent), with each dataset's accountant at its cap's δ.</div>
<h2>Datasets</h2>
{% if datasets %}
<table id="datasets">
  <thead><tr><th>Dataset</th><th class="num">Cap ε</th><th class="num">Cap δ</th><th class="num">Own ε</th>
    <th class="num">Worst-case ε</th><th class="num">Remaining ε</th><th>Used</th><th>Cap reached</th><th>Accountant</th>
    <th class="num">Releases</th><th>Last release</th></tr></thead>
  <tbody>
  {%- for s in datasets %}
    <tr data-dataset="{{ s.dataset }}" data-parent="{{ s.parent or '' }}" data-depth="{{ s.depth }}">
      <td style="padding-left: {{ 10 + 20 * s.depth }}px"><a href="{{ s.page_url }}">{{ s.dataset }}</a></td>
      <td class="num">{{ s.cap_epsilon | eps }}</td>
      <td class="num">{{ s.cap_delta | delta }}</td>
      <td class="num own">{{ s.own_epsilon | eps }}</td>
      <td class="num spent">{{ s.spent_epsilon | eps }}</td>
      <td class="num remaining">{{ s.remaining_epsilon | eps }}</td>
      <td>{{ m.usage(s) }}</td>
      <td class="forecast nowrap">{{ s.forecast | day }}</td>
      <td>{{ s.accountant }}</td>
      <td class="num releases">{{ s.releases }}</td>
      <td>{{ s.last_release_at | when }}</td>
    </tr>
  {%- endfor %}
  </tbody>
</table>
<h2>Worst-case ε over time</h2>
{{ m.chart(chart, "Worst-case epsilon per dataset over time, and its cap") }}
{% else %}
<div class="empty" id="no-datasets">No dataset has a privacy budget yet. DP tasks create one with
  <code>budget_cap=(epsilon, delta)</code>, or run <code>airflow-privacy budget set DATASET --epsilon E --delta D</code>.</div>
{% endif %}
{% if federated %}
<h2>Federated models</h2>
{%- for model in federated %}
<table class="federated" data-dag="{{ model.dag_id }}">
  <thead><tr><th colspan="4">{{ model.dag_id }}</th></tr>
    <tr><th class="num">Round</th><th class="num">Accuracy</th><th class="num">Spent ε</th><th>Run</th></tr></thead>
  <tbody>
  {%- for r in model.rounds %}
    <tr><td class="num">{{ r.round }}</td>
      <td class="num">{% if r.accuracy is not none %}{{ '%.4f' | format(r.accuracy) }}{% else %}–{% endif %}</td>
      <td class="num">{{ r.epsilon | eps }}</td>
      <td><a href="{{ r.url }}" data-airflow-ui target="_top">{{ r.run_id }}</a></td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- endfor %}
{% endif %}
{% endblock %}
""",
    "dataset.html": """{% extends "base.html" %}{% import "macros.html" as m %}
{% block body %}
<div class="crumbs"><a href="{{ overview_url }}">Privacy budget</a> / <span>{{ s.dataset }}</span></div>
<h1>{{ s.dataset }}</h1>
<div class="cards" id="status">
  <div class="card"><div class="k">Worst-case ε</div><div class="v spent">{{ s.spent_epsilon | eps }}</div></div>
  <div class="card"><div class="k">Own ε</div><div class="v own">{{ s.own_epsilon | eps }}</div></div>
  <div class="card"><div class="k">Remaining ε</div><div class="v remaining">{{ s.remaining_epsilon | eps }}</div></div>
  <div class="card"><div class="k">Cap (ε, δ)</div><div class="v">{{ s.cap_epsilon | eps }}, {{ s.cap_delta | delta }}</div></div>
  <div class="card"><div class="k">Spent δ</div><div class="v">{{ s.spent_delta | delta }}</div></div>
  <div class="card"><div class="k">Accountant</div><div class="v">{{ s.accountant }}</div></div>
  <div class="card"><div class="k">Used</div><div class="v">{{ m.usage(s) }}</div></div>
  <div class="card"><div class="k">Cap reached</div><div class="v forecast">{{ s.forecast | day }}</div></div>
</div>
<div id="tree">
{%- if s.parent_url %}<div>Partition of <a class="parent" href="{{ s.parent_url }}">{{ s.parent }}</a> (its siblings are disjoint)</div>{% endif %}
{%- if s.partitions %}<div>Partitions: {% for c in s.partitions %}<a class="partition" href="{{ c.url }}">{{ c.dataset }}</a> ({{ c.spent_epsilon | eps }} of {{ c.cap_epsilon | eps }}){% if not loop.last %}, {% endif %}{% endfor %}</div>{% endif %}
</div>
<h2>Worst-case ε over time</h2>
{{ m.chart(chart, "Worst-case epsilon of " ~ s.dataset ~ " over time, and its cap") }}
<h2>Releases <span class="muted">({{ total }}{% if total > releases | length %}, latest {{ releases | length }} shown{% endif %})</span></h2>
{% if releases %}
<table id="releases">
  <thead><tr><th>Time</th><th>DAG</th><th>Run</th><th>Task</th><th class="num">ε</th><th class="num">δ</th>
    <th class="num">Cumulative ε</th><th>Error bars (±95 %, sd)</th><th>Status</th><th>Output</th></tr></thead>
  <tbody>
  {%- for r in releases %}
    <tr data-release="{{ r.release_id }}">
      <td class="nowrap">{{ r.created_at | when }}</td>
      {%- if r.dag_id %}
      <td><a href="{{ r.dag_url }}" data-airflow-ui target="_top">{{ r.dag_id }}</a></td>
      <td><a href="{{ r.run_url }}" data-airflow-ui target="_top">{{ r.run_id }}</a></td>
      <td><a class="ti" href="{{ r.ti_url }}" data-airflow-ui target="_top">{{ r.task_id }}{% if r.map_index is not none and r.map_index >= 0 %} [{{ r.map_index }}]{% endif %}</a></td>
      {%- else %}
      <td colspan="3" class="mono">{{ r.release_id }}</td>
      {%- endif %}
      <td class="num">{{ r.epsilon | eps }}</td>
      <td class="num">{{ r.delta | delta }}</td>
      <td class="num">{{ r.spent_epsilon | eps }}</td>
      <td class="bars">{% for name, b in r.error_bars.items() %}<div data-metric="{{ name }}">{{ name }}
        {%- if b.basis == "per_count" %} ±{{ b.ci95_times_n | bar }}/n (sd {{ b.sd_times_n | bar }}/n)
        {%- else %} ±{{ b.ci95 | bar }} (sd {{ b.sd | bar }}){% endif %}</div>{% else %}–{% endfor %}</td>
      <td class="status-{{ r.status }}">{{ r.status }}</td>
      <td class="mono">{{ r.output or "–" }}</td>
    </tr>
  {%- endfor %}
  </tbody>
</table>
{% else %}
<div class="empty" id="no-releases">No release has been charged to this dataset yet.</div>
{% endif %}
<p class="muted" id="error-bars-note">Error bars come from each release's recorded mechanisms (public
  parameters only, no data): ±w holds the bounded statistic with probability ≥ 95 %, sd is the noise's
  standard deviation. Counts and sums: exact, the same for every group. Means: divide by the group's count
  n -- an approximate bound (delta method at the widest mean; optimistic for groups of a few units).
  Variances, std and quantiles: see the task's return value or the output's _sd/_ci95 columns.</p>
{% if hidden %}<p class="muted">{{ hidden }} release(s) of DAGs you cannot read are not listed.</p>{% endif %}
<h2>Refused releases <span class="muted">({{ refusals.refusals | length }})</span></h2>
{% if refusals.refusals %}
<table id="refusals">
  <thead><tr><th>Time</th><th>DAG</th><th>Run</th><th>Task</th><th>Logical date</th><th class="num">Asked ε</th>
    <th class="num">Asked δ</th><th>Why</th></tr></thead>
  <tbody>
  {%- for r in refusals.refusals %}
    <tr data-release="{{ r.release_id }}"><td class="nowrap">{{ r.created_at | when }}</td><td>{{ r.dag_id or "–" }}</td>
      <td>{{ r.run_id or "–" }}</td><td>{{ r.task_id or "–" }}</td><td class="nowrap">{{ r.logical_date | when }}</td>
      <td class="num">{{ r.epsilon | eps }}</td><td class="num">{{ r.delta | delta }}</td><td>{{ r.reason }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{% else %}<div class="empty" id="no-refusals">No release of this dataset has been refused{% if refusals.hidden_refusals %} that you may see{% endif %}.</div>{% endif %}
{% if refusals.hidden_refusals %}<p class="muted">{{ refusals.hidden_refusals }} refused release(s) of DAGs you cannot read are not listed.</p>{% endif %}
<h2>Cap changes</h2>
<table id="cap-changes">
  <thead><tr><th>Time</th><th>By</th><th class="num">Cap ε</th><th class="num">Cap δ</th><th>Parent</th><th>Reason</th></tr></thead>
  <tbody>
  {%- for c in cap_changes %}
    <tr><td class="nowrap">{{ c.changed_at | when }}</td><td>{{ c.changed_by or "–" }}</td>
      <td class="num">{{ c.old_epsilon | eps }} → {{ c.new_epsilon | eps }}</td>
      <td class="num">{{ c.old_delta | delta }} → {{ c.new_delta | delta }}</td>
      <td>{{ c.old_parent or "–" }} → {{ c.new_parent or "–" }}</td><td>{{ c.reason }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{% endblock %}
""",
    "error.html": """{% extends "base.html" %}
{% block body %}
<h1>{{ title }}</h1>
<p>{{ message }}</p>
{% if login_url %}<p><a href="{{ login_url }}" target="_top">Log in to Airflow</a></p>{% endif %}
{% if back_url %}<p><a href="{{ back_url }}">Back to the privacy budget</a></p>{% endif %}
{% endblock %}
""",
}

_env = jinja2.Environment(
    loader=jinja2.DictLoader(_TEMPLATES),
    autoescape=True,  # every value is escaped: names are user input (see module docstring)
    undefined=jinja2.StrictUndefined,
    trim_blocks=False,
)
_env.filters.update(eps=fmt_eps, delta=fmt_delta, when=fmt_time, day=fmt_day, bar="{:.2g}".format)


def render_overview(*, datasets: Sequence[dict[str, Any]], series: Sequence[SpendSeries],
                    federated: Sequence[dict[str, Any]]) -> str:
    """The dashboard: datasets table, cumulative-ε chart, federated panel (when any)."""
    return _env.get_template("overview.html").render(
        title="Privacy budget", datasets=datasets, chart=chart_geometry(series), federated=federated)


def render_dataset(*, status: dict[str, Any], series: SpendSeries, releases: Sequence[dict[str, Any]],
                   total: int, hidden: int, overview_url: str, refusals: dict[str, Any],
                   cap_changes: Sequence[dict[str, Any]]) -> str:
    """One dataset: its budget and place in the tree, its chart, its releases (newest first)
    linking to Airflow, its refused releases and its cap changes."""
    return _env.get_template("dataset.html").render(
        title=f"Privacy budget: {status['dataset']}", s=status, chart=chart_geometry([series]),
        releases=releases, total=total, hidden=hidden, overview_url=overview_url, refusals=refusals,
        cap_changes=cap_changes)


def render_error(*, title: str, message: str, login_url: str | None = None, back_url: str | None = None) -> str:
    return _env.get_template("error.html").render(
        title=title, message=message, login_url=login_url, back_url=back_url)
