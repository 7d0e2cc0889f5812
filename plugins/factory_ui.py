"""The "Model Factory" view in the Airflow UI (wiring only; the view is pipelines/ui/).

- ``fastapi_apps``: the view's FastAPI app, mounted by the API server under ``/factory``
  (its routes require an Airflow JWT: see :mod:`pipelines.ui.app`);
- ``external_views``: a top-level navigation entry that shows ``factory/`` inside the
  UI (at ``/plugin/model-factory``). ``href`` and ``icon`` are relative: the UI resolves
  them against its base URL, so a deployment under a path prefix works too.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pipelines.ui.app import PREFIX, create_app


class FactoryUIPlugin(AirflowPlugin):
    name = "factory_ui"
    fastapi_apps = [{"app": create_app(), "url_prefix": PREFIX, "name": "Model Factory"}]
    external_views = [
        {
            "name": "Model Factory",
            "href": PREFIX.lstrip("/") + "/",
            "url_route": "model-factory",
            "destination": "nav",
            "icon": PREFIX.lstrip("/") + "/static/icon.svg",
        }
    ]
