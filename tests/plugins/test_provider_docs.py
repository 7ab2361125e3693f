"""The provider info's documentation link resolves: the README of the installed version,
served by Airflow's own API-server app factory through the ``airflow.plugins`` entry point."""

from __future__ import annotations

from importlib import metadata

from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_privacy.get_provider_info import get_provider_info
from airflow_privacy.plugins.provider_docs import DOCS_PREFIX, render_docs


def test_documentation_link_is_served_by_the_api_server(airflow_db):
    from airflow import plugins_manager
    from airflow.api_fastapi import app as api_app

    apps, _ = plugins_manager.get_fastapi_plugins()  # real discovery: the entry points
    assert DOCS_PREFIX in {a["url_prefix"] for a in apps}
    root = FastAPI()
    api_app.init_plugins(root)
    client = TestClient(root)
    url = get_provider_info()["integrations"][0]["external-doc-url"]
    assert url.startswith(DOCS_PREFIX)
    page = client.get(url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h2>Install into your Airflow deployment</h2>" in page.text
    assert f"airflow-privacy {metadata.version('airflow-privacy')}" in page.text
    assert client.head(url).status_code == 200
    assert client.post(url).status_code == 405


def test_raw_html_in_the_readme_is_not_rendered():
    """The page is Markdown rendered with html=False: a tag in the README stays text."""
    from markdown_it import MarkdownIt

    assert "&lt;script&gt;" in MarkdownIt("commonmark", {"html": False}).render("<script>x</script>")
    assert "<script" not in render_docs()
