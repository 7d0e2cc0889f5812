"""The "Model Factory" view of the Airflow UI: one page per factory, per product line its
recent batches (cleaning counts, validation verdict, Data Docs), its models (metrics,
blessing, which version is in serving, the MLflow registry's champion), its hyperparameter
search (the latest studies, the latest one's trials over time and its settings' importances,
the tuned settings the next training uses), its drift scores over time (for image lines
also thumbnails of quarantined images with their reasons, and an evaluation's confusion
matrix and example gallery), and links to the Airflow runs and MLflow runs behind each item.

- :mod:`~pipelines.ui.data`: what the page shows, as dataclasses;
- :mod:`~pipelines.ui.gather`: fills them from the factory's catalog (batch ledger,
  training runs, evaluation results, serving store, drift history); testable without
  Airflow or a browser;
- :mod:`~pipelines.ui.lookups`: what only Airflow's metadata database (the DAG runs behind a
  batch or a training run) and MLflow (registry versions, aliases) know;
- :mod:`~pipelines.ui.charts` and :mod:`~pipelines.ui.render`: server-rendered HTML from
  the Jinja2 templates in ``templates/`` (autoescaped), with inline CSS and inline SVG
  charts (nothing is fetched from anywhere else);
- :mod:`~pipelines.ui.images`: images on the page (an image line's quarantined files, an
  evaluation's examples), decoded and re-encoded as inline PNGs, never passed through;
- :mod:`~pipelines.ui.docs`: Great Expectations Data Docs, served path-confined;
- :mod:`~pipelines.ui.app`: the FastAPI app the Airflow plugin (``plugins/factory_ui.py``)
  mounts, with Airflow's JWT required on every data route.
"""
