"""``PrivacyBudgetPlugin``: the privacy budget dashboard inside the Airflow 3 UI.

The plugin mounts a FastAPI app (:mod:`.budget_api`) on the API server under ``/privacy``
and adds a *Privacy budget* entry to the UI's Browse menu that shows ``/privacy/dashboard``
framed in the UI (an external view with a ``url_route``: the page lives at
``/plugin/privacy-budget`` in the UI). Registered through the ``airflow.plugins`` entry point.

Every Airflow component imports plugins -- the scheduler and each task process included --
so this module stays light: the FastAPI app is built on the first request it serves.
"""

from __future__ import annotations

import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_privacy.plugins.budget_urls import URL_PREFIX, URL_ROUTE, dashboard_href

PLUGIN_NAME = "privacy_budget"


class _LazyApp:
    """ASGI app that builds the dashboard's FastAPI app when it first serves a request."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from airflow_privacy.plugins.budget_api import create_app

                    self._app = create_app()
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._get()(scope, receive, send)

    def __repr__(self) -> str:
        return "airflow_privacy.plugins.budget_api:create_app()"


def _base_url() -> str | None:
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback=None)


dashboard_app = _LazyApp()


class PrivacyBudgetPlugin(AirflowPlugin):
    """Privacy budget dashboard: JSON API and HTML page under ``/privacy``, framed in the UI."""

    name = PLUGIN_NAME
    fastapi_apps = [{"app": dashboard_app, "url_prefix": URL_PREFIX, "name": "Privacy budget"}]
    external_views = [
        {
            "name": "Privacy budget",
            "href": dashboard_href(_base_url()),
            "url_route": URL_ROUTE,
            "destination": "nav",
            "category": "browse",
        }
    ]
