"""Where the budget dashboard lives: its mount point, its UI route and the URLs built on them.

Shared by the plugin (which mounts and registers the pages) and the operator extra link (which
points at them); plain string work, importable anywhere.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

URL_PREFIX = "/privacy"
"""Where the API server mounts the dashboard app."""
URL_ROUTE = "privacy-budget"
"""The UI route of the framed page: ``/plugin/privacy-budget``."""


def airflow_base_path(base_url: str | None) -> str:
    """The path part of ``[api] base_url`` (``""`` when Airflow is served at the root)."""
    return urlsplit(base_url or "").path.rstrip("/")


def dashboard_href(base_url: str | None) -> str:
    """The dashboard page's own path (what the UI frames)."""
    return f"{airflow_base_path(base_url)}{URL_PREFIX}/dashboard"


def dataset_ui_url(dataset: str, base_url: str | None) -> str:
    """URL of a dataset's dashboard page framed in the Airflow UI (what the extra link opens).

    The UI shows ``/plugin/<url_route>/<rest>`` by framing the path ``/<rest>``, so what follows
    the route is the page's own path, base path included.
    """
    root = (base_url or "").rstrip("/")
    page = f"{airflow_base_path(base_url)}{URL_PREFIX}/dashboard/datasets/{quote(dataset, safe='')}"
    return f"{root}/plugin/{URL_ROUTE}{page}"
