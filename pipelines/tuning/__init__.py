"""Hyperparameter search: one Optuna study per ``tune_<line>`` DAG run.

- :mod:`pipelines.tuning.params`: a trial's or the tuned settings applied over a spec,
  and the tuned settings the next training reads.
- :mod:`pipelines.tuning.study`: the shared study storage, the spec's sampler and pruner,
  the search space as Optuna suggestions, and the study as its record.
- :mod:`pipelines.tuning.stage`: the tuning DAG's tasks (start, one trial, finish).
"""
