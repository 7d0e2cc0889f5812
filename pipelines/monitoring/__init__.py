"""Drift monitoring: reference profiles, batch scoring, reports and episodes.

- :mod:`~pipelines.monitoring.profile`: ``build_profile`` / ``save_profile`` / ``load_profile``;
- :mod:`~pipelines.monitoring.statistics`: PSI, Jensen-Shannon, L-infinity, ROC AUC;
- :mod:`~pipelines.monitoring.detection`: ``score_batch`` (the alarm rule is documented there);
- :mod:`~pipelines.monitoring.report`: the JSON and HTML report of a scored batch;
- :mod:`~pipelines.monitoring.episodes`: drift episodes, cooldown and ``should_retrain``;
- :mod:`~pipelines.monitoring.batch`: ``monitor_batch``, all of the above for one batch;
- :mod:`~pipelines.monitoring.sensor`: the deferrable sensor's trigger (new validated batches);
- :mod:`~pipelines.monitoring.stage`: what the monitor DAG's tasks call.

The drift history, episode state and reports are records of the catalog
(:mod:`pipelines.catalog.records`); the spec's ``drift:`` section is
:mod:`pipelines.specs.drift`. Runs in the orchestration environment (pandas, numpy,
scipy; matplotlib for plots); this package's ``__init__`` imports nothing, so DAG files
stay cheap to parse.
"""
