"""The budget dashboard app: authentication, content from a real SQLite ledger, escaping, links."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from html.parser import HTMLParser
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.plugins import budget_chart
from airflow_privacy.plugins.budget_dashboard import PrivacyBudgetPlugin, dashboard_app
from airflow_privacy.plugins.budget_urls import dataset_ui_url

EVIL = '<script>alert("x")</script> & "quotes" \'single\''


def _cost(eps: float) -> PrivacyCost:
    return PrivacyCost(eps, 0.0, [{"kind": "pure", "epsilon": eps}])


@pytest.fixture
def filled(ledger) -> PrivacyLedger:
    ledger.set_budget("patients", epsilon=3.0, delta=1e-6, accountant="basic")
    for day in (1, 2):
        ledger.charge("patients", release_id=f"dp_daily_statistics/run_{day}/visit_statistics/-1", cost=_cost(1.0),
                      output=f"file:///out/date={day}.parquet", dag_id="dp_daily_statistics",
                      run_id=f"scheduled__2026-05-0{day}T00:00:00+00:00", task_id="visit_statistics", map_index=-1)
    ledger.set_budget("visits", epsilon=2.0, delta=0.0, accountant="basic")
    ledger.charge("visits", release_id="notebook-1", cost=_cost(0.5))
    return ledger


ROUTES = ["/privacy/", "/privacy/dashboard", "/privacy/dashboard/datasets/patients", "/privacy/api/datasets",
          "/privacy/api/datasets/patients", "/privacy/api/datasets/patients/releases", "/privacy/api/federated"]


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_requires_an_airflow_user(anonymous, filled, token, path):
    assert anonymous.get(path).status_code == 401
    assert anonymous.get(path, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    assert anonymous.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert anonymous.get(path, cookies={"_token": token}).status_code == 200  # how the framed UI page is loaded


def test_no_openapi_docs_outside_authentication(anonymous):
    for path in ("/privacy/docs", "/privacy/openapi.json", "/privacy/redoc"):
        assert anonymous.get(path).status_code in (401, 404)


def test_unauthenticated_page_says_so_in_html(anonymous):
    r = anonymous.get("/privacy/dashboard")
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert "Not logged in" in r.text and "/auth/login" in r.text
    r = anonymous.get("/privacy/api/datasets")
    assert r.status_code == 401 and r.json() == {"detail": "Not authenticated"}


def test_api_datasets_from_the_ledger(client, filled):
    body = client.get("/privacy/api/datasets").json()
    assert body["total_entries"] == 2
    patients, visits = body["datasets"]
    assert patients["dataset"] == "patients" and visits["dataset"] == "visits"
    assert patients["cap_epsilon"] == 3.0 and patients["cap_delta"] == 1e-6 and patients["accountant"] == "basic"
    assert patients["spent_epsilon"] == pytest.approx(2.0) and patients["remaining_epsilon"] == pytest.approx(1.0)
    assert patients["releases"] == 2
    last = filled.history("patients")[-1].created_at
    assert dt.datetime.fromisoformat(patients["last_release_at"]) == last

    one = client.get("/privacy/api/datasets/visits").json()
    assert one["spent_epsilon"] == pytest.approx(0.5) and one["remaining_epsilon"] == pytest.approx(1.5)
    assert [p["spent_epsilon"] for p in client.get("/privacy/api/datasets/patients").json()["cumulative_epsilon"]] \
        == pytest.approx([1.0, 2.0])


def test_api_releases_newest_first_with_ui_links(client, filled):
    body = client.get("/privacy/api/datasets/patients/releases").json()
    assert body["total_entries"] == 2 and body["hidden_entries"] == 0
    newest, oldest = body["releases"]
    assert newest["run_id"] == "scheduled__2026-05-02T00:00:00+00:00" and newest["spent_epsilon"] == pytest.approx(2.0)
    assert oldest["epsilon"] == 1.0 and oldest["output"] == "file:///out/date=1.parquet"
    assert newest["ti_url"] == ("/dags/dp_daily_statistics/runs/scheduled__2026-05-02T00%3A00%3A00%2B00%3A00"
                                "/tasks/visit_statistics")
    assert newest["run_url"] == newest["ti_url"].rsplit("/tasks/", 1)[0]
    page = client.get("/privacy/api/datasets/patients/releases", params={"limit": 1, "offset": 1}).json()
    assert [r["release_id"] for r in page["releases"]] == [oldest["release_id"]] and page["total_entries"] == 2
    assert client.get("/privacy/api/datasets/patients/releases", params={"limit": 0}).status_code == 422
    # a charge made outside Airflow has no DAG run to link to
    (notebook,) = client.get("/privacy/api/datasets/visits/releases").json()["releases"]
    assert notebook["dag_id"] is None and notebook["ti_url"] is None


def test_mapped_task_release_links_to_its_map_index(client, ledger):
    ledger.set_budget("m", epsilon=1.0, accountant="basic")
    ledger.charge("m", release_id="d/r/t/3", cost=_cost(0.1), dag_id="d", run_id="r", task_id="t", map_index=3)
    (release,) = client.get("/privacy/api/datasets/m/releases").json()["releases"]
    assert release["ti_url"] == "/dags/d/runs/r/tasks/t/mapped/3"


def test_releases_of_unreadable_dags_are_hidden(client, filled, viewer_token):
    # a user with no role may read no DAG: the releases are counted, not listed
    body = client.get("/privacy/api/datasets/patients/releases", cookies={"_token": viewer_token}).json()
    assert body["releases"] == [] and body["hidden_entries"] == 2 and body["total_entries"] == 0
    notebook = client.get("/privacy/api/datasets/visits/releases", cookies={"_token": viewer_token}).json()
    assert len(notebook["releases"]) == 1


@pytest.fixture
def mixed(filled) -> PrivacyLedger:
    """``mixed``: a release made outside Airflow, then a later one of a DAG."""
    filled.set_budget("mixed", epsilon=2.0, delta=0.0, accountant="basic")
    filled.charge("mixed", release_id="notebook-2", cost=_cost(0.25))
    filled.charge("mixed", release_id="secret_dag/r/t/-1", cost=_cost(0.5), dag_id="secret_dag", run_id="r",
                  task_id="t", map_index=-1)
    return filled


def test_dataset_api_shows_a_restricted_viewer_only_the_releases_it_may_read(client, mixed, viewer_token):
    """The series and last release come from readable releases; the totals stay the dataset's."""
    notebook, dag_release = mixed.history("mixed")
    assert dag_release.created_at > notebook.created_at
    as_viewer = {"cookies": {"_token": viewer_token}}

    body = client.get("/privacy/api/datasets/mixed", **as_viewer).json()
    assert body["spent_epsilon"] == pytest.approx(0.75) and body["remaining_epsilon"] == pytest.approx(1.25)
    assert body["releases"] == 2 and body["cap_epsilon"] == 2.0
    assert body["cumulative_epsilon"] == [{"time": notebook.created_at.isoformat(), "spent_epsilon": 0.25}]
    assert dt.datetime.fromisoformat(body["last_release_at"]) == notebook.created_at

    patients = client.get("/privacy/api/datasets/patients", **as_viewer).json()
    assert patients["cumulative_epsilon"] == [] and patients["last_release_at"] is None
    assert patients["spent_epsilon"] == pytest.approx(2.0) and patients["releases"] == 2

    listed = {d["dataset"]: d for d in client.get("/privacy/api/datasets", **as_viewer).json()["datasets"]}
    assert listed["patients"]["last_release_at"] is None and listed["patients"]["spent_epsilon"] == pytest.approx(2.0)
    assert dt.datetime.fromisoformat(listed["mixed"]["last_release_at"]) == notebook.created_at

    # an admin reads every DAG: the same routes show both releases
    admin = client.get("/privacy/api/datasets/mixed").json()
    assert [p["spent_epsilon"] for p in admin["cumulative_epsilon"]] == pytest.approx([0.25, 0.75])
    assert dt.datetime.fromisoformat(admin["last_release_at"]) == dag_release.created_at


def _markers(html: str) -> list[str]:
    return re.findall(r"<circle [^>]*><title>([^<]*)</title></circle>", html)


def test_chart_shows_a_restricted_viewer_only_the_releases_it_may_read(client, mixed, viewer_token):
    as_viewer = {"cookies": {"_token": viewer_token}}
    overview = client.get("/privacy/dashboard", **as_viewer).text
    # visits' and mixed's notebook releases only; none of patients' two DAG releases
    assert sorted(m.split(" · ")[0] for m in _markers(overview)) == ["mixed", "visits"]
    assert not [m for m in _markers(overview) if m.startswith("patients")]
    # the legend and the table still carry the dataset's whole spend
    assert re.search(r'<g class="series" data-dataset="patients" data-spent="2">', overview)
    assert "patients: ε 2 of 3" in overview and "mixed: ε 0.75 of 2" in overview
    row = re.search(r'<tr data-dataset="patients"[^>]*>(.*?)</tr>', overview, re.S).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[-1] == "–"  # no visible last release

    page = client.get("/privacy/dashboard/datasets/patients", **as_viewer).text
    assert _markers(page) == [] and "<tr data-release=" not in page
    assert "2 release(s) of DAGs you cannot read are not listed" in page
    mixed_page = client.get("/privacy/dashboard/datasets/mixed", **as_viewer).text
    (marker,) = _markers(mixed_page)
    assert marker.endswith("spent ε = 0.25") and "secret_dag" not in mixed_page

    assert len(_markers(client.get("/privacy/dashboard").text)) == 5  # the admin sees all of them


def test_unknown_dataset_is_404(client, filled):
    r = client.get("/privacy/api/datasets/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert client.get("/privacy/api/datasets/nope/releases").status_code == 404
    page = client.get("/privacy/dashboard/datasets/nope")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Back to the privacy budget" in page.text


def test_empty_ledger(client, ledger):
    assert client.get("/privacy/api/datasets").json() == {"datasets": [], "total_entries": 0}
    # (the federated panel reads Airflow's XComs, shared with other tests of the session)
    page = client.get("/privacy/dashboard")
    assert page.status_code == 200 and 'id="no-datasets"' in page.text and "<svg" not in page.text
    ledger.set_budget("fresh", epsilon=1.0)
    page = client.get("/privacy/dashboard/datasets/fresh")
    assert page.status_code == 200 and 'id="no-releases"' in page.text and "<svg" in page.text


def test_ledger_unavailable_is_503_without_leaking_the_url(client, monkeypatch):
    url = "postgresql+psycopg2://user:s3cret@127.0.0.1:1/nodb"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    r = client.get("/privacy/api/datasets")
    assert r.status_code == 503 and "s3cret" not in r.text and "ledger is unavailable" in r.json()["detail"]


def test_ledger_failing_mid_request_is_503(client, filled, monkeypatch):
    import sqlalchemy as sa

    assert client.get("/privacy/api/datasets").status_code == 200  # the app now holds an engine

    def gone(self, dataset):
        raise sa.exc.OperationalError("SELECT ...", {}, Exception("server closed the connection"))

    monkeypatch.setattr(PrivacyLedger, "history", gone)
    r = client.get("/privacy/api/datasets")
    assert r.status_code == 503 and r.json() == {"detail": "the privacy budget ledger is unavailable; see the API server log"}
    page = client.get("/privacy/dashboard")
    assert page.status_code == 503 and "ledger is unavailable" in page.text


def test_connection_cannot_be_chosen_by_the_request(client, filled, tmp_path):
    other = PrivacyLedger(f"sqlite:///{tmp_path}/other.db")
    other.set_budget("secret", epsilon=1.0)
    for params in ({"conn_id": "other"}, {"budget_conn_id": "other"}, {"privacy_budget_conn_id": "other"}):
        names = [d["dataset"] for d in client.get("/privacy/api/datasets", params=params).json()["datasets"]]
        assert names == ["patients", "visits"]


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [v for _, v in attrs if v]

    def handle_data(self, data):
        self.text.append(data)


def test_dashboard_page_table_and_chart(client, filled):
    html = client.get("/privacy/dashboard").text
    row = re.search(r'<tr data-dataset="patients"[^>]*>(.*?)</tr>', html, re.S).group(1)
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    # dataset, cap ε, cap δ, own ε, worst-case ε, remaining ε, used, cap reached (no schedule known: never)
    assert cells[:6] == ["patients", "3", "1e-06", "2", "2", "1"] and cells[7:10] == ["never", "basic", "2"]
    assert cells[10].endswith("UTC")
    assert 'href="/privacy/dashboard/datasets/patients"' in html
    # one step line per dataset ending at its spend, a dashed cap line (as it was: a step line too), a
    # legend with ε spent of cap
    assert re.search(r'<g class="series" data-dataset="patients" data-spent="2">\s*<polyline class="cap"', html)
    assert len(re.findall(r"<polyline ", html)) == 4 and len(re.findall(r"<circle ", html)) == 3
    assert "patients: ε 2 of 3" in html and "visits: ε 0.5 of 2" in html
    assert "<script src" not in html and "http" not in html.split("<body>")[1].replace('http://www.w3.org/2000/svg', '')


def test_dataset_page_lists_releases_linking_to_airflow(client, filled):
    html = client.get("/privacy/dashboard/datasets/patients").text
    assert html.count("<tr data-release=") == 2
    assert ('href="/dags/dp_daily_statistics/runs/scheduled__2026-05-02T00%3A00%3A00%2B00%3A00/tasks/visit_statistics"'
            in html)
    assert 'class="v spent">2<' in html and 'class="v remaining">1<' in html
    assert html.index("scheduled__2026-05-02") < html.index("scheduled__2026-05-01")  # newest first


def test_user_input_is_html_escaped_everywhere(client, ledger):
    ledger.set_budget(EVIL, epsilon=1.0, accountant="basic")
    ledger.charge(EVIL, release_id=EVIL, cost=_cost(0.25), dag_id=EVIL, run_id=EVIL, task_id=EVIL,
                  output=EVIL, map_index=-1)
    for path in ("/privacy/dashboard", "/privacy/dashboard/datasets/" + EVIL.replace("/", "%2F")):
        r = client.get(path)
        assert r.status_code == 200, path
        html = r.text
        assert "<script>alert" not in html and 'alert("x")' not in html
        parsed = _Collector()
        parsed.feed(html)
        assert parsed.tags.count("script") == 1  # only the page's own script
        assert any(EVIL in t for t in parsed.text)  # shown, as text
    missing = client.get("/privacy/dashboard/datasets/" + EVIL.replace("/", "%2F") + "-missing")
    assert missing.status_code == 404 and "<script>alert" not in missing.text and "&lt;script&gt;" in missing.text
    # the name round-trips through the URL (and the API) unharmed
    assert client.get("/privacy/api/datasets/" + EVIL.replace("/", "%2F")).json()["dataset"] == EVIL


def test_dataset_names_with_slashes(client, ledger):
    ledger.set_budget("clinic/a", epsilon=1.0, accountant="basic")
    ledger.charge("clinic/a", release_id="r", cost=_cost(0.25))
    assert client.get("/privacy/api/datasets/clinic/a").json()["spent_epsilon"] == pytest.approx(0.25)
    assert client.get("/privacy/api/datasets/clinic%2Fa/releases").json()["total_entries"] == 1
    assert 'href="/privacy/dashboard/datasets/clinic%2Fa"' in client.get("/privacy/dashboard").text
    assert client.get("/privacy/dashboard/datasets/clinic%2Fa").status_code == 200


def test_chart_geometry_is_monotone_steps_within_the_plot():
    t0 = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    series = [budget_chart.SpendSeries("a", 3.0, [(t0, 1.0), (t0 + dt.timedelta(days=1), 2.0)]),
              budget_chart.SpendSeries("b", 1.0, [])]
    geo = budget_chart.chart_geometry(series)
    pts = [tuple(map(float, p.split(","))) for p in geo["lines"][0]["points"].split()]
    assert [p[1] for p in pts] == sorted((p[1] for p in pts), reverse=True)  # SVG y grows downwards
    assert all(geo["left"] <= x <= geo["right"] and geo["top"] <= y <= geo["bottom"] for x, y in pts)
    assert geo["lines"][1]["points"] == "" and geo["y_ticks"][-1]["label"] in {"3.5", "4"}


def test_plugin_declares_app_view_and_auth(airflow_db):
    from airflow.api_fastapi.core_api.datamodels.plugins import (
        ExternalViewResponse,
        FastAPIAppResponse,
    )

    assert PrivacyBudgetPlugin.name == "privacy_budget"
    (app,) = PrivacyBudgetPlugin.fastapi_apps
    assert app["app"] is dashboard_app and app["url_prefix"] == "/privacy"
    FastAPIAppResponse.model_validate({**app, "app": "x"})
    (view,) = PrivacyBudgetPlugin.external_views
    assert ExternalViewResponse.model_validate(view).destination == "nav"
    assert view["href"] == "/privacy/dashboard" and view["url_route"] == "privacy-budget"
    assert view["category"] == "browse"


def test_plugin_is_served_by_airflows_api_server(airflow_db, filled, token, monkeypatch):
    """Airflow's own app factory mounts the plugin app; its auth applies to the mounted routes."""
    from airflow import plugins_manager
    from airflow.api_fastapi import app as api_app

    monkeypatch.setattr(plugins_manager, "get_fastapi_plugins",
                        lambda: (PrivacyBudgetPlugin.fastapi_apps, []))
    root = FastAPI()
    api_app.init_plugins(root)
    anonymous = TestClient(root)
    assert anonymous.get("/privacy/api/datasets").status_code == 401
    r = anonymous.get("/privacy/dashboard", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and 'data-dataset="patients"' in r.text


def test_extra_link_opens_the_dataset_page_in_the_ui():
    from airflow_privacy.operators.dp_aggregate import DPAggregateOperator
    from airflow_privacy.operators.links import PrivacyBudgetLink

    link = PrivacyBudgetLink()
    assert link.name == "Privacy budget"
    op = DPAggregateOperator(task_id="t", source="/s", destination="/d", dataset="clinic/a b", epsilon=1.0,
                             metrics={"n": "count"})
    assert link.get_link(op, ti_key=None) == "/plugin/privacy-budget/privacy/dashboard/datasets/clinic%2Fa%20b"
    assert dataset_ui_url("p", "http://host:8080/") == "http://host:8080/plugin/privacy-budget/privacy/dashboard/datasets/p"
    assert dataset_ui_url("p", "https://h/airflow") == \
        "https://h/airflow/plugin/privacy-budget/airflow/privacy/dashboard/datasets/p"
    op.dataset = ""
    assert link.get_link(op, ti_key=None) == ""


STAND_IN_DAG = """
import pendulum
from airflow.sdk import DAG, BaseOperator

from airflow_privacy.operators.links import PrivacyBudgetLink


class FederatedRoundOperator(BaseOperator):  # stands in for the real one: same task type
    def __init__(self, *, result, **kwargs):
        super().__init__(**kwargs)
        self.result = result

    def execute(self, context):
        return self.result


class OtherOperator(FederatedRoundOperator):
    pass


class LinkedOperator(BaseOperator):  # a DP operator's templated dataset and extra link
    template_fields = ("dataset",)
    operator_extra_links = (PrivacyBudgetLink(),)

    def __init__(self, *, dataset, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset

    def execute(self, context):
        return None


with DAG("stand_in_rounds", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    FederatedRoundOperator(task_id="round_2", result={"round": 2, "metrics": {"eval_accuracy": 0.91, "epsilon": 9},
                                                      "privacy": {"spent_epsilon": 1.5}})
    FederatedRoundOperator(task_id="round_3", result={"metrics": {"round": 3, "eval_accuracy": 0.93}})
    FederatedRoundOperator(task_id="round_1", result={"round": 1, "accuracy": 0.8, "epsilon": 0.75})
    FederatedRoundOperator(task_id="no_round", result={"rows": 3})
    FederatedRoundOperator(task_id="not_a_dict", result=[1, 2])
    OtherOperator(task_id="other", result={"round": 9})
    LinkedOperator(task_id="linked", dataset="clinic/{{ ds }}")
"""


@pytest.fixture(scope="module")
def stand_in_run(airflow_db, tmp_path_factory):
    """One ``dag.test()`` run of :data:`STAND_IN_DAG` (from its own DAG bundle, as dag.test needs)."""
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    bundle = tmp_path_factory.mktemp("bundle")
    (bundle / "stand_in_rounds.py").write_text(STAND_IN_DAG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([
            {"name": "stand_in", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
             "kwargs": {"path": str(bundle)}}]))
        dag = DagBag(dag_folder=str(bundle)).get_dag("stand_in_rounds")
        run = dag.test(logical_date=pendulum.datetime(2026, 5, 1, tz="UTC"))
    assert run.state == "success"
    return run


def test_extra_link_is_stored_when_the_task_runs(stand_in_run):
    (ti,) = [t for t in stand_in_run.get_task_instances() if t.task_id == "linked"]
    assert ti.xcom_pull(task_ids="linked", key="_link_PrivacyBudgetLink") == \
        "/plugin/privacy-budget/privacy/dashboard/datasets/clinic%2F2026-05-01"


def test_federated_panel_reads_round_results(client, ledger, viewer_token, stand_in_run):
    body = client.get("/privacy/api/federated").json()
    (model,) = [m for m in body["models"] if m["dag_id"] == "stand_in_rounds"]
    assert [(r["round"], r["accuracy"], r["epsilon"]) for r in model["rounds"]] == \
        [(1, 0.8, 0.75), (2, 0.91, 1.5), (3, 0.93, None)]
    assert model["rounds"][0]["url"] == f"/dags/stand_in_rounds/runs/{quote(stand_in_run.run_id, safe='')}/tasks/round_1"
    html = client.get("/privacy/dashboard").text
    assert 'data-dag="stand_in_rounds"' in html and "0.9100" in html
    hidden = client.get("/privacy/api/federated", cookies={"_token": viewer_token}).json()
    assert hidden == {"models": [], "total_entries": 0}


def test_plugin_import_stays_light():
    """Every Airflow process imports plugins (scheduler, each task): the app is built on first use."""
    import subprocess
    import sys

    code = ("import sys, airflow_privacy.plugins.budget_dashboard, airflow_privacy.operators.links\n"
            "heavy = [m for m in ('fastapi', 'airflow.api_fastapi.core_api.security',\n"
            "                     'airflow_privacy.plugins.budget_api') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_airflow_loads_the_plugin_from_its_entry_point(tmp_path):
    """Installed, the package registers the plugin: Airflow mounts its app and lists its view.

    Needs the ``airflow.plugins`` entry point in pyproject.toml and a reinstall of the package.
    """
    import subprocess
    import sys

    code = (
        "from airflow import plugins_manager as pm\n"
        "plugins, errors = pm._get_plugins()\n"
        "assert not errors, errors\n"
        "(ours,) = [p for p in plugins if p.name == 'privacy_budget']\n"
        "assert 'airflow_privacy' in str(ours.source), ours.source\n"
        "apps, _ = pm.get_fastapi_plugins()\n"
        "assert [a['url_prefix'] for a in apps if a['name'] == 'Privacy budget'] == ['/privacy'], apps\n"
        "views, _ = pm._get_ui_plugins()\n"
        "assert [v['url_route'] for v in views if v['name'] == 'Privacy budget'] == ['privacy-budget'], views\n"
    )
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp_path)}  # an empty plugins folder
    # cwd outside the checkout: `python -c` puts the cwd on sys.path, and the editable
    # install's airflow_privacy.egg-info there would list the entry point a second time.
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
