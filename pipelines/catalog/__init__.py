"""The factory's catalog of records: where each record lives and what it looks like.

Every stage writes its records through this package and every reader (the stages, the
``factory`` CLI, the Model Factory view, the Prometheus exporter) reads them through it;
no other module builds a record's path or parses a record's file.

- :mod:`~pipelines.catalog.layout`: every path, from configuration (``FACTORY_HOME``,
  ``FACTORY_SERVING_STORE``, ``FACTORY_TFX_ROOT``, ``FACTORY_MLMD_URI``);
- :mod:`~pipelines.catalog.records`: the typed records and the one reader and writer of each;
- :mod:`~pipelines.catalog.ledger`: the batch ledger (status and counts of every batch).

Writes go through :mod:`pipelines.storage` (one lock, atomic writes, strict JSON), so a
reader never sees half a record.

Lineage. Each record names the records it came from, so the story of a served model can
be walked back from the store: a push (``factory_push.json``) names its training run;
the run's manifest names the batches it trained on (ledger ids) and its spec version;
the evaluation result names the run, the baseline and the ML Metadata ids of its
ModelEvaluation and ModelBlessing; a drift record names the batch and the serving
version it was scored against, and the retrain it set off.

Why ML Metadata holds the gate's lineage only. Kedro's ``DataCatalog`` maps names to
datasets so that nodes never build a path; TFX keeps every artefact and its lineage in
ML Metadata (MLMD) so components ask MLMD instead of listing folders. This catalog is
the first kind, and MLMD stays where TFX needs it: the evaluation gate's Resolver finds
the last blessed model in MLMD and the Pusher acts on MLMD's ModelBlessing, so those
artefacts and their lineage live there. Putting the other stages into MLMD too was
weighed and left out because (1) ``ml-metadata`` is a native library that installs only
in the ML environment (TFX 1.16 pins it), while the ledger, drift and serving records
are written and read in the orchestration environment, by Airflow tasks, the view and
the exporter; (2) the embedded default keeps MLMD in SQLite, one writer at a time,
which would serialise every ingest task behind the gate; (3) these records are small
JSON documents that people, Prometheus and ``jq`` read as they are. The cross-references
above give the same walk from a served model back to its batches. At scale the gate's
MLMD moves to MySQL or PostgreSQL (``FACTORY_MLMD_URI``) and this catalog to shared
storage (``FACTORY_HOME``, ``FACTORY_SERVING_STORE``), both by configuration.

Modality. Nothing here depends on what a line's rows are (tabular columns or images):
a record carries counts, paths, metrics and verdicts, and each stage's own module
decides what its data looks like.
"""
