"""Online serving on the embedded default: a model server speaking TF Serving's REST API
over the serving store, and the prediction log every answered request is written to.

- :mod:`~pipelines.serving.server`: the HTTP API, the store's versions (hot swap), metrics;
- :mod:`~pipelines.serving.servable`: one loaded version, its inputs checked, its outputs as
  JSON (imports TensorFlow: ML environment);
- :mod:`~pipelines.serving.batching`: micro-batches, one signature call and one log append each;
- :mod:`~pipelines.serving.predlog`: the prediction log.
"""
