"""The QuartTrio application: routes per area, JSON errors, auth and request metrics."""

from __future__ import annotations

import time

import structlog
from quart import g, request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse as Response
from werkzeug.exceptions import HTTPException

from dragonfork import metrics
from dragonfork.config import Settings
from dragonfork.core import Core
from dragonfork.http.auth import TokenIssuer, login_blueprint
from dragonfork.http.cors import cors_blueprint
from dragonfork.http.errors import ApiError, error_response
from dragonfork.http.read_only import changes_state
from dragonfork.http.routes.about import about_blueprint
from dragonfork.http.routes.config import config_blueprint
from dragonfork.http.routes.docs import docs_blueprint
from dragonfork.http.routes.files import FileUploadRequest, files_blueprint, serve_from_diskfs
from dragonfork.http.routes.ingest import ingest_blueprint
from dragonfork.http.routes.monitor import monitor_blueprint
from dragonfork.http.routes.process import process_blueprint
from dragonfork.http.routes.sessions import WIDGET_PREFIX, sessions_blueprint
from dragonfork.http.routes.ui import ui_blueprint
from dragonfork.http.routes.whep import whep_blueprint
from dragonfork.http.routes.whip import is_reader_path, whip_blueprint

log = structlog.get_logger("dragonfork.http")


def create_app(core: Core) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)
    app.request_class = FileUploadRequest
    app.config["MAX_CONTENT_LENGTH"] = core.settings.api.max_body_bytes
    app.config["BODY_TIMEOUT"] = core.settings.api.body_timeout_seconds
    app.config["JSON_SORT_KEYS"] = False
    issuer = TokenIssuer(core.settings.api.auth)
    _declare_settings(app, core, issuer)

    @app.before_request
    async def _before() -> None:
        g.started = time.perf_counter()
        # datarhei's widget needs no auth; a WHIP stream's Matroska read is authorised by its own key
        public = request.path.startswith(WIDGET_PREFIX) or is_reader_path(request.path)
        if request.path.startswith("/api/v3") and not public:
            issuer.require()
            if core.settings.api.read_only and changes_state(request.method, request.path):
                raise ApiError(
                    403,
                    f"the API is read-only (api.read_only): {request.method} {request.path} is refused",
                    details=["api.read_only: the API is read-only"],
                )
        elif request.path == "/metrics" and core.settings.metrics.protect:
            issuer.require_for_metrics()

    @app.after_request
    async def _after(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        metrics.HTTP_DURATION.labels(route).observe(
            time.perf_counter() - g.get("started", time.perf_counter())
        )
        return response

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return error_response(exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code == 404 and (file := await serve_from_diskfs(core.files)) is not None:
            return file  # diskfs at /: after every route of the app
        message = {
            404: f"no route {request.method} {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
            408: f"request body incomplete after api.body_timeout_seconds ({app.config['BODY_TIMEOUT']} s)",
            413: f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes",
        }.get(code, exc.description or exc.name)
        allow = {name: value for name, value in exc.get_headers() if name.lower() == "allow"}  # 405 needs it
        return error_response(code, message, headers=allow)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", method=request.method, path=request.path)
        return error_response(500, "internal error; the server log has the details")

    app.register_blueprint(cors_blueprint())
    app.register_blueprint(login_blueprint(issuer))
    app.register_blueprint(about_blueprint(core, issuer))
    app.register_blueprint(config_blueprint(core.config))
    app.register_blueprint(process_blueprint(core))
    app.register_blueprint(monitor_blueprint(core))
    app.register_blueprint(whep_blueprint(core))
    app.register_blueprint(whip_blueprint(core))
    app.register_blueprint(files_blueprint(core.files))
    app.register_blueprint(sessions_blueprint(core))
    app.register_blueprint(ingest_blueprint(core))
    app.register_blueprint(docs_blueprint())
    app.register_blueprint(ui_blueprint())
    return app


def _declare_settings(app: QuartTrio, core: Core, issuer: TokenIssuer) -> None:
    """What the HTTP layer reads, for config reloads: auth and body limit are applied, the rest read live."""

    def take(settings: Settings) -> None:
        issuer.configure(settings.api.auth)
        app.config["MAX_CONTENT_LENGTH"] = settings.api.max_body_bytes
        app.config["BODY_TIMEOUT"] = settings.api.body_timeout_seconds

    core.config.depend("http_api", ("api.auth", "api.max_body_bytes", "api.body_timeout_seconds"), take)
    core.config.depend("http_api_per_request", ("id", "name", "host", "api.read_only", "metrics", "webrtc"))
