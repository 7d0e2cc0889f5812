"""The view's FastAPI app, mounted by the Airflow plugin under ``/factory``.

Airflow mounts a plugin's FastAPI app as it is: its routes are **not** covered by Airflow's
authentication. So every route that shows data requires what Airflow's own API requires: a
JWT issued by Airflow (the ``Authorization: Bearer`` header, or the UI's ``_token`` cookie),
verified by Airflow's auth manager (signature, expiry, revocation). The answers mirror
Airflow's REST API: no token or an expired one 401, a token that does not verify 403; a
browser gets a sign-in page with that status instead of JSON. On top of that, a user sees
only the lines whose DAGs (``ingest_<line>`` or ``train_<line>``) the auth manager lets
them read, and a line's Data Docs pages and reports only if they may see that line. The menu icon is
the only public route.

| route | what |
|---|---|
| ``GET /`` | the page (HTML) |
| ``GET /api/overview`` | the same data as JSON |
| ``GET /docs/<path>`` | Great Expectations Data Docs, path-confined (:mod:`pipelines.ui.docs`) |
| ``GET /reports/<line>/evaluation/<run>`` | the evaluation gate's report of a training run |
| ``GET /reports/<line>/drift/<batch>.html`` | the drift monitor's report of a batch |
| ``GET /static/icon.svg`` | the menu icon |
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from pipelines.config import factory_home
from pipelines.ui import docs, render
from pipelines.ui.data import AirflowRuns, MlflowInfo
from pipelines.ui.gather import gather, known_lines

PREFIX = "/factory"
COOKIE = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN

ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#0b6bcb" '
    'stroke-width="1.8" stroke-linejoin="round"><path d="M3 21V10l5 3V10l5 3V10l5 3V4h3v17z"/>'
    '<path d="M7 17h2M11 17h2M15 17h2"/></svg>'
)


class Authenticator(Protocol):
    async def user(self, request: Request) -> Any:
        """The request's user; raises HTTPException(401/403) when there is none."""

    def name(self, user: Any) -> str: ...

    def can_read_dag(self, user: Any, dag_id: str) -> bool: ...


class AirflowAuth:
    """Airflow's auth manager, as Airflow's own API routes use it."""

    async def user(self, request: Request) -> Any:
        from airflow.api_fastapi.app import get_auth_manager
        from jwt import ExpiredSignatureError, InvalidTokenError

        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None
        if token is None:
            # Airflow's JWTRefreshMiddleware (on the root app, so also in front of this one)
            # may already have verified the cookie and refreshed it; honour only its mark.
            try:
                from airflow.api_fastapi.core_api.security import USER_INJECTED_BY_TRUSTED_MIDDLEWARE
            except ImportError:
                marker = None
            else:
                marker = USER_INJECTED_BY_TRUSTED_MIDDLEWARE
            user = getattr(request.state, "user", None)
            if user is not None and marker is not None and getattr(request.state, "user_authenticated_via", None) is marker:
                return user
            token = request.cookies.get(COOKIE)
        if not token:
            raise HTTPException(status_code=401, detail="Not authenticated", headers={"WWW-Authenticate": "Bearer"})
        try:
            return await get_auth_manager().get_user_from_token(token)
        except ExpiredSignatureError:
            raise HTTPException(status_code=401, detail="Token Expired", headers={"WWW-Authenticate": "Bearer"}) from None
        except InvalidTokenError:
            raise HTTPException(status_code=403, detail="Invalid JWT token") from None

    def name(self, user: Any) -> str:
        try:
            return str(user.get_name())
        except Exception:  # noqa: BLE001
            return str(user)

    def can_read_dag(self, user: Any, dag_id: str) -> bool:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

        return bool(get_auth_manager().is_authorized_dag(method="GET", user=user, details=DagDetails(id=dag_id)))


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept.split(",")[0]


def _security_headers(response: Response, csp: str) -> Response:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def create_app(
    *,
    auth: Authenticator | None = None,
    home: Path | None = None,
    airflow_runs: AirflowRuns | None = None,
    mlflow: MlflowInfo | None = None,
    use_lookups: bool = True,
) -> FastAPI:
    """The view's app. Defaults: Airflow's auth manager, the factory home from the
    environment at each request, Airflow's metadata database and MLflow for links and the
    registry (``use_lookups=False``: files only)."""
    auth = auth or AirflowAuth()
    if use_lookups:
        from pipelines.ui.lookups import AirflowDbRuns, MlflowRegistry

        airflow_runs = airflow_runs if airflow_runs is not None else AirflowDbRuns()
        mlflow = mlflow if mlflow is not None else MlflowRegistry(home)

    app = FastAPI(
        title="Model Factory", docs_url=None, redoc_url=None, openapi_url=None, swagger_ui_oauth2_redirect_url=None
    )

    def current_home() -> Path:
        return Path(home) if home is not None else factory_home()

    async def allowed(request: Request) -> tuple[Any, set[str]]:
        user = await auth.user(request)
        lines = {
            name
            for name, _, _ in known_lines(current_home())
            if auth.can_read_dag(user, f"ingest_{name}") or auth.can_read_dag(user, f"train_{name}")
        }
        return user, lines

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code in (401, 403) and _wants_html(request):
            login = f"../auth/login?next={request.url}"
            body = render.unauthorized_page(exc.status_code, str(exc.detail), login)
            response = HTMLResponse(body, status_code=exc.status_code, headers=headers)
            return _security_headers(response, "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'")
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        return JSONResponse({"detail": "bad request"}, status_code=400)

    @app.get("/static/icon.svg", include_in_schema=False)
    def icon() -> Response:
        return Response(ICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> Response:
        user, lines = await allowed(request)
        from starlette.concurrency import run_in_threadpool

        overview = await run_in_threadpool(
            gather, current_home(), airflow=airflow_runs, mlflow=mlflow, allowed=lines
        )
        nonce = secrets.token_urlsafe(16)
        body = render.page(overview, user=auth.name(user), nonce=nonce)
        csp = (
            f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; img-src 'self' data:; "
            "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
        )
        return _security_headers(HTMLResponse(body), csp)

    @app.get("/api/overview")
    async def overview_json(request: Request) -> Response:
        _, lines = await allowed(request)
        from starlette.concurrency import run_in_threadpool

        overview = await run_in_threadpool(
            gather, current_home(), airflow=airflow_runs, mlflow=mlflow, allowed=lines
        )
        return _security_headers(JSONResponse(overview.to_dict()), "default-src 'none'")

    @app.get("/docs/{path:path}")
    async def data_docs(path: str, request: Request) -> Response:
        _, lines = await allowed(request)
        target = docs.resolve(path, current_home())
        if target is None:
            raise HTTPException(status_code=404, detail="no such Data Docs page")
        line = docs.line_of(path, docs.suite_lines())
        if (line is not None and line not in lines) or (line is None and not lines):
            raise HTTPException(status_code=403, detail="not allowed to read this line's Data Docs")
        return _security_headers(FileResponse(target), docs.DOCS_CSP)

    @app.get("/reports/{line}/{kind}/{name}")
    async def report(line: str, kind: str, name: str, request: Request) -> Response:
        _, lines = await allowed(request)
        if line not in lines:
            raise HTTPException(status_code=403, detail="not allowed to read this line's reports")
        target = docs.report_file(line, kind, name, current_home())
        if target is None:
            raise HTTPException(status_code=404, detail="no such report")
        return _security_headers(FileResponse(target, media_type="text/html"), docs.DOCS_CSP)

    return app
