"""Online serving on the embedded default: a model server speaking TF Serving's REST API
(:mod:`pipelines.serving.server`) over the serving store, and the prediction log every
answered request is written to (:mod:`pipelines.serving.predlog`)."""
