"""The admin function: an app of the privacy API alone (functions/admin/routes.py).

`create_admin_app(settings)` builds it (tests build their own); `lambda_handler` is the
module-level `app` behind apig-wsgi for API Gateway and ALB events, as the ingest function's.
The template creates this function only when an admin-token secret is given; built without
ADMIN_TOKEN (or ADMIN_TOKEN_SECRET) it serves nothing (every path 404), and says so.
"""

from __future__ import annotations

import logging
import os

from apig_wsgi import make_lambda_handler
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from functions.admin.routes import error, register_admin_routes
from shared import logs
from shared.settings import Settings

log = logging.getLogger(__name__)

# 5,000 subject IDs of up to ~800 bytes each: more is no regulation this API accepts.
MAX_BODY_BYTES = 4 * 1024 * 1024


def create_admin_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)  # serves no files
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    if settings.admin_token is None:
        log.warning("ADMIN_TOKEN and ADMIN_TOKEN_SECRET are unset: the privacy API is not served")
    register_admin_routes(app, settings)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Unknown paths and methods answer as the API's own refusals do: code and message.
        status = exc.code or 500
        response = error(status, exc.name.lower().replace(" ", "_"), exc.description or "")
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    return app


if logs.json_wanted():  # on Lambda
    logs.configure(os.environ.get("LOG_LEVEL", "info"))
app = create_admin_app()
lambda_handler = make_lambda_handler(app, binary_support=True)
