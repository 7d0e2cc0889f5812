"""Hyperparameter search: one Optuna study per ``tune_<line>`` DAG run.

- :mod:`pipelines.tuning.params`: a trial's or the tuned settings applied over a spec,
  and the tuned settings the next training reads.
"""
