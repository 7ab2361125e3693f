"""``ProviderDocsPlugin``: the provider's documentation, served by each deployment itself.

The provider info's documentation link (``external-doc-url``) points at :data:`DOCS_PREFIX`
on the API server, where this plugin renders the README that ships in the installed wheel's
metadata -- so the link works in every deployment and describes the installed version, with
no external site. (A relative URL cannot be the distribution's ``Documentation``
Project-URL: packaging requires an absolute one, and the project has no public site.) The page is the package's public README: it needs no login
and holds no deployment data. Raw HTML in the Markdown is not rendered (``html=False``).

Like every plugin it is imported by every Airflow process, so it stays light: Markdown is
rendered on the first request.
"""

from __future__ import annotations

import functools
import html
from importlib import metadata
from typing import Any

from airflow.plugins_manager import AirflowPlugin

DOCS_PREFIX = "/privacy-docs"
"""Where the API server serves the documentation (relative to Airflow's own root)."""
DISTRIBUTION = "airflow-privacy"

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
          "line-height:1.5}pre{background:#f4f4f4;padding:.75rem;overflow-x:auto}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem}")


@functools.lru_cache(maxsize=1)
def render_docs() -> str:
    """The installed distribution's README (its long description) as one HTML page."""
    from markdown_it import MarkdownIt

    meta = metadata.metadata(DISTRIBUTION)
    text = meta.get_payload() or meta.get("Description") or ""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    title = html.escape(f"{DISTRIBUTION} {meta['Version']}")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


async def docs_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI app: the documentation page for GET/HEAD at any path under :data:`DOCS_PREFIX`."""
    from starlette.responses import HTMLResponse, PlainTextResponse

    if scope["type"] != "http":
        return
    if scope["method"] not in ("GET", "HEAD"):
        response = PlainTextResponse("method not allowed", status_code=405, headers={"Allow": "GET, HEAD"})
    else:
        response = HTMLResponse(render_docs())
    await response(scope, receive, send)


class ProviderDocsPlugin(AirflowPlugin):
    """Serves the provider's README at ``/privacy-docs/`` on the API server."""

    name = "privacy_docs"
    fastapi_apps = [{"app": docs_app, "url_prefix": DOCS_PREFIX, "name": "airflow-privacy documentation"}]
