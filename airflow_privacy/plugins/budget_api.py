"""The FastAPI app behind the dashboard: JSON API and HTML pages over the privacy budget ledger.

Mounted by Airflow's API server under ``/privacy`` (see :mod:`.budget_dashboard`). Routes:

* ``GET /api/datasets`` -- every dataset's cap, own and worst-case spend, remaining ε,
  accountant, last release, place in the population tree (``parent``, ``children``, ``depth``;
  parents before their partitions) and ``forecast`` (ISO date its cap is projected to be
  reached, or ``"never"``; :mod:`.budget_forecast`);
* ``GET /api/datasets/{name}`` -- one dataset, with its worst-case-ε series
  (``cumulative_epsilon``), its cap over time (``cap_over_time``), its ``cap_changes`` and its
  ``refusals`` (refused releases; ``hidden_refusals`` counts those left out);
* ``GET /api/datasets/{name}/releases`` -- its releases, newest first (``limit``, ``offset``),
  each with its metrics' ``error_bars`` from the ledger's events (public parameters only);
  ``name`` percent-encoded (``/`` as ``%2F``) reaches every name, ``x/releases`` included
  (a name's unencoded ``/`` works too, except before a final ``releases``);
* ``GET /api/federated`` -- federated rounds (round, accuracy, ε) from the ``return_value``
  XCom of ``FederatedRoundOperator`` tasks; empty when there are none;
* ``GET /`` and ``GET /dashboard`` -- the HTML dashboard; ``GET /dashboard/datasets/{name}``
  -- one dataset's page with links to the DAG runs and task instances of its releases.

Security: plugin apps get no authentication from Airflow, so every route depends on
Airflow's own ``get_user`` (JWT from the ``Authorization: Bearer`` header, or from the
``_token`` cookie the UI sets -- which is what an iframe'd page receives): 401 without a
token, 403 with an invalid one. Releases and federated rounds of DAGs the user may not read
(auth manager ``is_authorized_dag``) are left out everywhere they would show one release --
the releases list, the refused releases, the worst-case-ε series and chart markers,
``last_release_at`` and the federated panel; a dataset's totals (cap, spent, remaining ε,
number of releases), its cap changes and its forecast are the dataset's, not a DAG's, and are
shown whole. The ledger is always the one of the
default ``privacy_budget`` connection: no request parameter selects a connection, so a user
cannot make the API server open other connections. The OpenAPI docs routes are disabled
because FastAPI serves them outside the app's dependencies.

What the routes show -- DAG read access, UI URLs, releases, series, refusals and federated
rounds -- is computed in :mod:`.budget_data`.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_privacy.plugins import budget_page
from airflow_privacy.plugins.budget_data import (
    FEDERATED_OPERATOR,
    _DagReadAccess,
    _federated_rounds,
    _local_path,
    _page_url,
    _refusals,
    _releases,
    _series,
    _visible,
)
from airflow_privacy.plugins.budget_tree import BudgetTree

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

    from airflow_privacy.core.budget import BudgetStatus, PrivacyLedger

__all__ = ["FEDERATED_OPERATOR", "LedgerDep", "UserDep", "authenticated_user", "create_app"]

log = logging.getLogger(__name__)


async def authenticated_user(request: Request) -> BaseUser:
    """Airflow's ``get_user`` (bearer header first, then the UI's ``_token`` cookie).

    Imported on the first request, not with the module: every Airflow component (scheduler,
    workers) imports the plugin, and the API security module costs seconds to import.
    """
    from airflow.api_fastapi.core_api import security

    credentials = await security.bearer_scheme(request)
    return await security.get_user(request=request, _oauth_token=None, bearer_credentials=credentials)


# Any, not BaseUser: FastAPI resolves these annotations at runtime, and BaseUser is imported lazily.
UserDep = Annotated[Any, Depends(authenticated_user)]


# -- ledger -----------------------------------------------------------------------------------
_ledgers: dict[str, PrivacyLedger] = {}
_ledgers_lock = threading.Lock()


def _ledger() -> PrivacyLedger:
    """The ledger of the default ``privacy_budget`` connection (one engine per URL, reused)."""
    from airflow_privacy.core.budget import PrivacyLedger
    from airflow_privacy.hooks.budget import PrivacyBudgetHook

    try:
        url = PrivacyBudgetHook().get_url()
        with _ledgers_lock:
            if url not in _ledgers:
                _ledgers[url] = PrivacyLedger(url)
            return _ledgers[url]
    except Exception:
        # The URL may hold credentials: log the details server-side, answer generically.
        log.exception("Cannot open the privacy budget ledger of connection privacy_budget_default")
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "the privacy budget ledger is unavailable; see the API server log") from None


LedgerDep = Annotated[Any, Depends(_ledger)]


def _status(ledger: PrivacyLedger, name: str) -> BudgetStatus:
    try:
        return ledger.status(name)
    except KeyError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {name!r} has no privacy budget") from None


class _JSON(JSONResponse):
    """JSON where a non-finite number (inf or NaN written into the ledger by hand: caps are
    validated finite) is ``null``, instead of the 500 that strict JSON encoding raises."""

    def render(self, content: Any) -> bytes:
        return super().render(_finite(content))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# -- app --------------------------------------------------------------------------------------
def create_app() -> FastAPI:
    """The dashboard app; every route requires an authenticated Airflow user."""
    app = FastAPI(
        title="Privacy budget",
        description="Privacy budget ledger of airflow-privacy: datasets, releases, federated rounds.",
        dependencies=[Depends(authenticated_user)],
        docs_url=None, redoc_url=None, openapi_url=None,
    )

    @app.exception_handler(StarletteHTTPException)
    async def _html_errors(request: Request, exc: StarletteHTTPException):
        if _local_path(request).startswith("/api/"):
            return await http_exception_handler(request, exc)
        login_url = None
        if exc.status_code == status.HTTP_401_UNAUTHORIZED:
            try:
                from airflow.api_fastapi.app import get_auth_manager

                login_url = get_auth_manager().get_url_login()
            except Exception:
                log.debug("No login URL available", exc_info=True)
        title = {401: "Not logged in", 403: "Access denied", 404: "Not found"}.get(exc.status_code, "Error")
        body = budget_page.render_error(
            title=title, message=str(exc.detail), login_url=login_url,
            back_url=f"{request.scope.get('root_path', '').rstrip('/')}/dashboard" if exc.status_code == 404 else None)
        return HTMLResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(SQLAlchemyError)
    async def _ledger_errors(request: Request, exc: SQLAlchemyError):
        # e.g. the ledger's database went away after the engine was made; URL stays in the log
        log.error("Privacy budget ledger query failed: %s", exc)
        return await _html_errors(request, HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the privacy budget ledger is unavailable; see the API server log"))

    @app.get("/api/datasets", summary="Budget of every dataset")
    def list_datasets(ledger: LedgerDep, user: UserDep) -> JSONResponse:
        can_read, tree = _DagReadAccess(user), BudgetTree(ledger)
        datasets = [tree.summary(name, depth, _visible(tree.histories[name], can_read))
                    for name, depth in tree.ordered()]
        return _JSON({"datasets": datasets, "total_entries": len(datasets)})

    def dataset_body(name: str, ledger: PrivacyLedger, user: BaseUser) -> JSONResponse:
        _status(ledger, name)
        can_read, tree = _DagReadAccess(user), BudgetTree(ledger)
        visible = _visible(tree.histories[name], can_read)
        body = tree.summary(name, dict(tree.ordered()).get(name, 0), visible)
        body["cumulative_epsilon"] = [{"time": c.created_at.isoformat(), "spent_epsilon": c.spent_epsilon}
                                      for c in visible]
        changes = ledger.cap_changes(name)
        body["cap_changes"] = [c.to_dict() for c in changes]
        body["cap_over_time"] = [{"time": c.changed_at.isoformat(), "cap_epsilon": c.new_epsilon,
                                  "cap_delta": c.new_delta} for c in changes]
        body.update(_refusals(ledger, name, can_read))
        return _JSON(body)

    # `:path` because dataset names may contain "/"; the releases route must come first. Routing
    # sees the percent-decoded path, so `x%2Freleases` (the dataset "x/releases") lands here too:
    # only a literal "/releases" at the end of the raw path asks for releases.
    @app.get("/api/datasets/{name:path}/releases", summary="Releases of a dataset, newest first")
    def list_releases(request: Request, name: str, ledger: LedgerDep, user: UserDep,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      offset: Annotated[int, Query(ge=0)] = 0) -> JSONResponse:
        if not request.scope.get("raw_path", b"/releases").endswith(b"/releases"):
            return dataset_body(f"{name}/releases", ledger, user)
        _status(ledger, name)
        history = ledger.history(name)
        return _JSON(_releases(request, name, history, _visible(history, _DagReadAccess(user)), limit, offset))

    @app.get("/api/datasets/{name:path}", summary="Budget of one dataset and its cumulative ε")
    def get_dataset(name: str, ledger: LedgerDep, user: UserDep) -> JSONResponse:
        return dataset_body(name, ledger, user)

    @app.get("/api/federated", summary="Federated learning rounds: round, accuracy, spent ε")
    def federated(request: Request, user: UserDep) -> JSONResponse:
        models = _federated_rounds(request, user)
        return _JSON({"models": models, "total_entries": len(models)})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/dashboard", response_class=HTMLResponse, summary="Dashboard page")
    def dashboard(request: Request, ledger: LedgerDep, user: UserDep) -> HTMLResponse:
        datasets, series = [], []
        can_read, tree = _DagReadAccess(user), BudgetTree(ledger)
        for name, depth in tree.ordered():
            visible = _visible(tree.histories[name], can_read)
            datasets.append({**tree.summary(name, depth, visible), "page_url": _page_url(request, name)})
            series.append(_series(tree.statuses[name], visible, ledger.cap_changes(name)))
        html = budget_page.render_overview(datasets=datasets, series=series,
                                           federated=_federated_rounds(request, user))
        return HTMLResponse(html)

    @app.get("/dashboard/datasets/{name:path}", response_class=HTMLResponse, summary="Dataset page")
    def dataset_page(request: Request, name: str, ledger: LedgerDep, user: UserDep) -> HTMLResponse:
        _status(ledger, name)
        can_read, tree = _DagReadAccess(user), BudgetTree(ledger)
        s, history = tree.statuses[name], tree.histories[name]
        visible = _visible(history, can_read)
        releases = _releases(request, name, history, visible, limit=500, offset=0)
        changes = ledger.cap_changes(name)
        status_ = {**tree.summary(name, visible=visible),
                   "parent_url": _page_url(request, s.parent) if s.parent in tree.statuses else None,
                   "partitions": [{"dataset": c, "url": _page_url(request, c),
                                   "spent_epsilon": tree.statuses[c].spent_epsilon,
                                   "cap_epsilon": tree.statuses[c].cap_epsilon} for c in tree.children.get(name, [])]}
        html = budget_page.render_dataset(
            status=status_, series=_series(s, visible, changes), releases=releases["releases"],
            total=releases["total_entries"], hidden=releases["hidden_entries"],
            overview_url=f"{request.scope.get('root_path', '').rstrip('/')}/dashboard",
            refusals=_refusals(ledger, name, can_read), cap_changes=[c.to_dict() for c in changes])
        return HTMLResponse(html)

    return app
