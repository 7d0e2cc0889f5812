"""One Horovod training worker: ``python -m pipelines.training.worker --run-dir DIR``.

Started once per rank by ``horovodrun -np W -H localhost:W --gloo`` (or a host
list / MPI at scale) on a run folder the training stage prepared (see
``pipelines.training.prepare``). Each rank reads only its own shard,
``data/train/part-<rank>.parquet``; every rank takes the same number of steps per
epoch (the smallest shard's full batches), so no collective waits on a missing peer.
The input pipeline is one ``tf.data`` pipeline for all epochs: the shard's columns as
tensors, each epoch a seeded shuffle (seed, epoch, rank) of row indices, full batches
gathered from the columns, then the model's preprocessor in ``map``, then prefetch.

Training uses Horovod's low-level TensorFlow API with ``tf_keras`` (Horovod's Keras
callbacks break on TF 2.16): ``hvd.DistributedGradientTape`` averages the gradients,
the learning rate is the manifest's times ``hvd.size()``, and the model, optimizer
and state variables are broadcast from rank 0 before the first step (all of them
exist before training starts, so one broadcast also carries a resumed checkpoint to
every rank). The forward and backward pass is one XLA-compiled function
(``jit_compile=True``); the allreduce and the optimizer update run around it,
because Horovod's ops have no XLA kernel on CPU.

Every epoch each rank scores its strided part of ``data/validation.parquet``; the
predictions are gathered, so all ranks compute the same exact ROC AUC and loss and
rank 0's numbers are broadcast as the decision. Early stopping watches the
validation AUC with the manifest's patience and keeps the best weights, which are
the ones exported.

Only rank 0 writes: ``checkpoints/`` (each epoch, with the epoch, best-so-far,
patience counter, best weights, optimizer state and history, so a restart resumes
where the last checkpoint left off, with the same per-epoch data order; dropout masks
are not reproducible under XLA), ``tensorboard/``, ``model/Format-Serving/`` (the
SavedModel, see :mod:`pipelines.training.model`) and, last, ``result.json``.
With ``MLFLOW_TRACKING_URI`` and ``MLFLOW_RUN_ID`` set, rank 0 logs each epoch's
metrics to that (already open) MLflow run and leaves it open.

Lines on stdout (``horovodrun`` prefixes them with ``[rank]<stdout>:``)::

    factory-train: resumed from epoch 3
    factory-train: epoch 4 loss=0.6123 val_loss=0.6011 val_auc=0.7012 samples/s=9123
    factory-train: rank=1 weights_sha256=<hex>

A run that cannot start (no run folder, a bad manifest, shards that do not match the
workers, an empty shard, a ``FACTORY_TRAIN_THREADS`` that is not a number >= 1) is caught before TensorFlow is imported: each rank exits
with status 2 after one line on stderr, ``factory-train: error: ...`` (the same line
on every rank).

One module for the one process ``horovodrun`` starts per rank: its phases are the
functions below, in the order they run (checks, data, state, steps, epochs, export).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.catalog import layout
from pipelines.catalog.records import write_training_result
from pipelines.config import train_threads
from pipelines.training.manifest import Manifest, ManifestError, load_manifest
from pipelines.training.model import (
    DataError,
    frame_to_features,
    frame_to_labels,
    model_kind,
    roc_auc,
    weights_sha256,
)

PREFIX = "factory-train:"
# A train shard's per-row loss weight (pipelines.training.prepare); rows without it weigh 1.
WEIGHT = "_weight"
EXIT_BAD_INPUT = 2
CHECKPOINTS_KEPT = 3
VALIDATION_BATCH = 4096
# the validation metric early stopping watches, by task (``val_<metric>`` in the history)
METRICS = {"binary_classification": "auc", "multiclass_classification": "accuracy"}
SAMPLE_IMAGES = 8  # training images shown in TensorBoard (image runs)


class TrainingError(RuntimeError):
    """Training cannot go on; the message is the one line the operator sees.

    Every rank that fails prints its line: a rank that printed nothing could be the one
    horovodrun saw exit first, and it stops the others before they print. Checks that
    every rank makes alike (the files, rank 0's checkpoint) give the same line on each.
    """


def say(message: str) -> None:
    sys.stdout.write(f"{PREFIX} {message}\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- checks before TensorFlow


@dataclass(frozen=True)
class Plan:
    run_dir: Path
    manifest: Manifest
    shards: list[Path]
    validation: Path
    steps_per_epoch: int


_ARROW_KINDS = {"integer": ("int64", "int32"), "double": ("double", "float"), "string": ("string", "large_string"),
                "image": ("binary", "large_binary")}


def _check_columns(path: Path, manifest: Manifest) -> None:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    types = {name: str(schema.field(name).type) for name in schema.names}
    wanted = [(f.name, f.type) for f in manifest.features] + [(manifest.label, "integer")]
    for name, ftype in wanted:
        if name not in types:
            raise TrainingError(f"{path.name}: column {name!r} is missing")
        if types[name] not in _ARROW_KINDS[ftype]:
            raise TrainingError(f"{path.name}: column {name!r} is {types[name]}, the manifest says {ftype}")


def preflight(run_dir: Path, workers: int | None) -> Plan:
    """Everything that can be checked from the files alone, identically on every rank."""
    import pyarrow.parquet as pq

    if not run_dir.is_dir():
        raise TrainingError(f"run dir {run_dir} does not exist")
    try:
        manifest = load_manifest(run_dir)
    except ManifestError as err:
        raise TrainingError(str(err)) from None
    n = len(manifest.shards)
    train = layout.train_shards_dir(run_dir)
    expected = [f"part-{i:05d}.parquet" for i in range(n)]
    found = sorted(p.name for p in train.glob("part-*.parquet")) if train.is_dir() else []
    if found != expected:
        raise TrainingError(
            f"{train} holds {len(found)} shard file(s) {found[:4]}, the manifest lists {n} shard(s) "
            f"(expected part-00000.parquet .. part-{n - 1:05d}.parquet)"
        )
    if workers is not None and workers != n:
        raise TrainingError(
            f"the run has {n} training shards but {workers} workers were started: "
            f"start one worker per shard (horovodrun -np {n})"
        )
    shards = [train / name for name in expected]
    for i, path in enumerate(shards):
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as err:  # any unreadable file is one error to the operator
            raise TrainingError(f"shard {path.name} cannot be read: {err}") from None
        if rows == 0:
            raise TrainingError(f"shard {path.name} is empty: every worker needs training rows")
        if rows != manifest.shards[i]:
            raise TrainingError(f"shard {path.name} has {rows} rows, the manifest says {manifest.shards[i]}")
        _check_columns(path, manifest)
    batch = manifest.params.batch_size
    steps = min(manifest.shards) // batch
    if steps == 0:
        raise TrainingError(
            f"the smallest shard has {min(manifest.shards)} rows, fewer than batch_size {batch}: "
            "no full batch to train on"
        )
    validation = layout.validation_data_path(run_dir)
    if not validation.is_file():
        raise TrainingError(f"{validation} not found")
    if pq.read_metadata(validation).num_rows == 0:
        raise TrainingError(f"{validation.name} is empty: early stopping needs validation rows")
    _check_columns(validation, manifest)
    return Plan(run_dir, manifest, shards, validation, steps)


# --------------------------------------------------------------------------- training


def _configure_devices(tf, hvd, fixed_threads: int | None = None) -> int:
    """Pin this rank's share of the CPU cores (and its own GPU, where there are GPUs):
    ``cores // local workers`` intra-op threads, or ``fixed_threads`` intra-op and inter-op
    threads (``FACTORY_TRAIN_THREADS``)."""
    if fixed_threads:
        threads, inter = fixed_threads, fixed_threads
    else:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        threads = max(1, cpus // hvd.local_size())
        inter = max(2, threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        gpu = gpus[hvd.local_rank() % len(gpus)]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
    return threads


def _read(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pandas()


def _mlflow_logger():
    """A function(metrics, step) logging to the launcher's open MLflow run, or None."""
    uri, run_id = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_RUN_ID")
    if not uri or not run_id:
        return None
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    warned = []

    def log(metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        try:
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        except Exception as err:  # tracking must not stop a training run
            if not warned:
                sys.stderr.write(f"{PREFIX} warning: MLflow logging failed, training goes on: {err}\n")
                warned.append(True)

    return log


@dataclass(frozen=True)
class _RankData:
    """This rank's rows: its training shard as tensors and its part of the validation rows."""

    columns: dict[str, Any]  # feature name -> 1-D tensor
    # binary: a (rows, 2) float32 tensor, the 0/1 label and the row's loss weight (the
    # shard's WEIGHT column, 1 where it has none); multiclass: 1-D int64 class indices
    targets: Any
    val_features: dict[str, Any]  # feature name -> numpy array
    val_labels: Any  # numpy array, as targets

    @property
    def rows(self) -> int:
        return int(self.targets.shape[0])


def _load_data(plan: Plan) -> _RankData:
    """Read this rank's shard and its strided part of the validation rows (rank r of W takes
    rows r, r+W, ...); refuse validation rows of one class, counted over all ranks."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    rank, size, m = hvd.rank(), hvd.size(), plan.manifest
    try:
        shard = _read(plan.shards[rank])
        x_train, y_train = frame_to_features(shard, m), frame_to_labels(shard, m)
        val = _read(plan.validation).iloc[rank::size]
        x_val, y_val = frame_to_features(val, m), frame_to_labels(val, m)
    except DataError as err:
        raise TrainingError(f"rank {rank}: {err}") from None
    if m.task == "multiclass_classification":
        import numpy as np

        counts = hvd.allreduce(tf.constant(np.bincount(y_val, minlength=m.num_classes), tf.float64),
                               op=hvd.Sum).numpy()
        if (counts > 0).sum() < 2:
            raise TrainingError("the validation rows hold one class only: accuracy and early stopping need two or more")
    else:
        pos = hvd.allreduce(tf.constant([y_val.sum(), len(y_val)], tf.float64), op=hvd.Sum).numpy()
        if pos[0] == 0 or pos[0] == pos[1]:
            raise TrainingError("the validation rows hold one class only: AUC and early stopping need both")
    # The shard as tensors; an epoch shuffles row indices and gathers each batch, which is
    # much cheaper than shuffling rows of ~20 scalar tensors one by one.
    columns = {name: tf.constant(values) for name, values in x_train.items()}
    if m.task == "binary_classification":
        import numpy as np

        weights = shard[WEIGHT].to_numpy("float32") if WEIGHT in shard.columns else np.ones(len(y_train), "float32")
        y_train = np.stack([np.asarray(y_train, "float32"), weights], axis=1)
    return _RankData(columns, tf.constant(y_train), x_val, y_val)


def _validation_batches(data: _RankData, preprocessor):
    """This rank's validation rows, preprocessed once and cached."""
    import tensorflow as tf

    @tf.function(autograph=False)
    def preprocess_features(features):
        return preprocessor(features)

    return tf.data.Dataset.from_tensor_slices(data.val_features).batch(VALIDATION_BATCH).map(
        preprocess_features).cache()


def _training_batches(plan: Plan, data: _RankData, preprocessor, first_epoch: int, augmenter=None):
    """An iterator over the batches of epochs ``first_epoch`` .. the last, as (features, labels).

    One pipeline for the remaining epochs (built and traced once): each epoch is a seeded
    shuffle of this rank's shard, cut into ``steps_per_epoch`` full batches; with an
    ``augmenter`` (image runs), each preprocessed batch's images are randomly changed.
    """
    import horovod.tensorflow as hvd
    import tensorflow as tf

    p, rank, rows, steps = plan.manifest.params, hvd.rank(), data.rows, plan.steps_per_epoch

    @tf.function(autograph=False)
    def gather(idx):
        return {name: tf.gather(col, idx) for name, col in data.columns.items()}, tf.gather(data.targets, idx)

    @tf.function(autograph=False)
    def preprocess(features, labels):
        return preprocessor(features), labels

    def one_epoch(epoch):
        seed = p.seed * 1000003 + epoch * 1009 + rank  # a fresh, reproducible order per epoch
        return (
            tf.data.Dataset.range(rows)
            .shuffle(rows, seed=seed, reshuffle_each_iteration=False)
            .batch(p.batch_size, drop_remainder=True)
            .take(steps)
        )

    batches = (
        tf.data.Dataset.range(first_epoch, p.epochs + 1)
        .flat_map(one_epoch)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    )
    if augmenter is not None:
        def augment(features, labels):
            return {**features, "image": augmenter(features["image"], training=True)}, labels

        batches = batches.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return iter(batches.prefetch(tf.data.AUTOTUNE))


@dataclass(frozen=True)
class _TrainState:
    """The model, the best weights so far, the optimizer and the early-stopping counters:
    what a checkpoint holds. Built whole before anything is restored or broadcast."""

    core: Any
    best: Any
    optimizer: Any
    counters: dict[str, Any]  # epoch, best_<metric>, best_epoch, wait, stopped: tf.Variables
    run_id: Any  # tf.Variable: the run the checkpoint belongs to
    history: Any  # tf.Variable: the per-epoch history as JSON text
    checkpoint: Any
    manager: Any  # rank 0's CheckpointManager; None on the other ranks

    def count(self, name: str) -> int:
        return int(self.counters[name].numpy())


COSINE_FLOOR = 0.05  # learning_rate_decay: cosine ends at this share of the rate


def _build_state(plan: Plan) -> _TrainState:
    import horovod.tensorflow as hvd
    import tensorflow as tf
    import tf_keras as keras

    m = plan.manifest
    kind = model_kind(m)
    core, best = kind.build_core(m), kind.build_core(m)
    best.set_weights(core.get_weights())
    rate = m.params.learning_rate * hvd.size()
    if m.params.learning_rate_decay == "cosine":
        # by optimizer step, which the checkpoint keeps: a resumed run carries on the curve
        rate = keras.optimizers.schedules.CosineDecay(
            rate, decay_steps=max(1, m.params.epochs * plan.steps_per_epoch), alpha=COSINE_FLOOR
        )
    optimizer = keras.optimizers.Adam(learning_rate=rate)
    optimizer.build(core.trainable_variables)
    counters = {
        "epoch": tf.Variable(0, dtype=tf.int64, trainable=False),
        f"best_{METRICS[m.task]}": tf.Variable(-1.0, dtype=tf.float64, trainable=False),
        "best_epoch": tf.Variable(0, dtype=tf.int64, trainable=False),
        "wait": tf.Variable(0, dtype=tf.int64, trainable=False),
        "stopped": tf.Variable(0, dtype=tf.int64, trainable=False),
    }
    run_id = tf.Variable(m.run_id, dtype=tf.string, trainable=False)
    history = tf.Variable("[]", dtype=tf.string, trainable=False)
    checkpoint = tf.train.Checkpoint(
        model=core, best_model=best, optimizer=optimizer, run_id=run_id, history=history, **counters
    )
    manager = None
    if hvd.rank() == 0:
        manager = tf.train.CheckpointManager(checkpoint, str(layout.checkpoints_dir(plan.run_dir)), CHECKPOINTS_KEPT)
    return _TrainState(core, best, optimizer, counters, run_id, history, checkpoint, manager)


def _restore(state: _TrainState, manifest: Manifest) -> tuple[int, list[dict[str, Any]]]:
    """Rank 0 restores its latest checkpoint of this run, if any, and every rank takes rank 0's
    variables. Returns the last epoch done (0: a fresh start) and, on rank 0, the history."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    rank, latest, restore_error = hvd.rank(), None, ""
    if state.manager is not None:
        latest = state.manager.latest_checkpoint
    if latest:
        try:
            state.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            restore_error = f"checkpoint {latest} does not fit this model: {err}"
        if not restore_error and state.run_id.numpy().decode() != manifest.run_id:
            restore_error = (f"checkpoint {latest} belongs to run "
                             f"{state.run_id.numpy().decode()!r}, not {manifest.run_id!r}")
    # every rank learns whether rank 0 could restore, then takes rank 0's variables
    restore_error = hvd.broadcast_object(restore_error, root_rank=0, name="restore_error")
    if restore_error:
        raise TrainingError(restore_error)
    hvd.broadcast_variables(
        state.core.variables + state.best.variables + list(state.optimizer.variables)
        + list(state.counters.values()),
        root_rank=0,
    )
    resumed_from = state.count("epoch")
    history = json.loads(state.history.numpy().decode()) if rank == 0 else []
    if rank == 0 and resumed_from:
        say(f"resumed from epoch {resumed_from}")
    return resumed_from, history


@dataclass(frozen=True)
class _Steps:
    train: Callable[[Any, Any], Any]  # (features, labels) -> this rank's batch loss
    validate: Callable[[], tuple[float, float]]  # -> (val_loss, val_<metric>), rank 0's on every rank
    # -> (labels, predicted class ids) of all validation rows, gathered from every rank (multiclass)
    predictions: Callable[[], tuple[Any, Any]] | None = None


def _step_functions(state: _TrainState, manifest: Manifest, val_batches, val_labels) -> _Steps:
    """The task's training step and validation pass (the manifest's task looked up in ``_TASK_STEPS``)."""
    return _TASK_STEPS[manifest.task](state, manifest, val_batches, val_labels)


def _train_step(forward, core, optimizer):
    """One optimiser step on ``forward``'s loss with the gradients averaged over the ranks."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    @tf.function(autograph=False)
    def train_step(features, labels):
        with tf.GradientTape() as tape:
            loss = forward(features, labels)
        tape = hvd.DistributedGradientTape(tape)
        grads = tape.gradient(loss, core.trainable_variables)
        optimizer.apply_gradients(zip(grads, core.trainable_variables, strict=True))
        return loss

    return train_step


def _binary_steps(state: _TrainState, manifest: Manifest, val_batches, val_labels) -> _Steps:
    """The training step (gradients averaged over the ranks) and the validation pass."""
    import horovod.tensorflow as hvd
    import numpy as np
    import tensorflow as tf

    core, optimizer = state.core, state.optimizer
    pos_weight = float(manifest.positive_weight)

    def weighted_bce(labels, logits, row_weight=1.0):
        per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        return tf.reduce_mean(per_example * (1.0 + (pos_weight - 1.0) * labels) * row_weight)

    # autograph=False throughout: no step branches on a tensor, and autograph converting
    # Keras' call machinery cost ~10 s of tracing on this machine.
    @tf.function(jit_compile=True, autograph=False)
    def forward(features, targets):
        # targets: the label and the row's own loss weight (a machine label's may be lower);
        # validation is unweighted
        return weighted_bce(targets[:, 0], core(features, training=True)[:, 0], targets[:, 1])

    train_step = _train_step(forward, core, optimizer)

    @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
    def predict_logits(features):
        return core(features, training=False)[:, 0]

    def validate() -> tuple[float, float]:
        logits = (np.concatenate([predict_logits(f).numpy() for f in val_batches])
                  if len(val_labels) else np.zeros(0))
        all_logits = hvd.allgather(tf.constant(logits, tf.float32), name="val_logits").numpy()
        all_labels = hvd.allgather(tf.constant(val_labels, tf.float32), name="val_labels").numpy()
        loss = float(weighted_bce(tf.constant(all_labels), tf.constant(all_logits)).numpy())
        auc = roc_auc(all_labels, all_logits)
        # rank 0's numbers are the decision everyone follows
        decided = hvd.broadcast(tf.constant([loss, auc], tf.float64), root_rank=0, name="val_decision").numpy()
        return float(decided[0]), float(decided[1])

    return _Steps(train_step, validate)


def _multiclass_steps(state: _TrainState, manifest: Manifest, val_batches, val_labels) -> _Steps:
    """Sparse categorical cross-entropy on the core's logits; validation accuracy and loss over
    all ranks' rows, rank 0's numbers broadcast as the decision."""
    import horovod.tensorflow as hvd
    import numpy as np
    import tensorflow as tf

    core, optimizer = state.core, state.optimizer
    jit = model_kind(manifest).jit_compile
    classes = manifest.num_classes

    def cross_entropy(labels, logits):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))

    @tf.function(jit_compile=jit, autograph=False)
    def forward(features, labels):
        return cross_entropy(labels, core(features, training=True)["logits"])

    train_step = _train_step(forward, core, optimizer)

    @tf.function(jit_compile=jit, reduce_retracing=True, autograph=False)
    def predict_logits(features):
        return core(features, training=False)["logits"]

    def gathered() -> tuple[np.ndarray, np.ndarray]:
        logits = (np.concatenate([predict_logits(f).numpy() for f in val_batches])
                  if len(val_labels) else np.zeros((0, classes), np.float32))
        all_logits = hvd.allgather(tf.constant(logits, tf.float32), name="val_logits").numpy()
        all_labels = hvd.allgather(tf.constant(val_labels, tf.int64), name="val_labels").numpy()
        return all_labels, all_logits

    def validate() -> tuple[float, float]:
        labels, logits = gathered()
        loss = float(cross_entropy(tf.constant(labels), tf.constant(logits)).numpy())
        accuracy = float((logits.argmax(axis=1) == labels).mean())
        decided = hvd.broadcast(tf.constant([loss, accuracy], tf.float64), root_rank=0, name="val_decision").numpy()
        return float(decided[0]), float(decided[1])

    def predictions() -> tuple[np.ndarray, np.ndarray]:
        labels, logits = gathered()
        return labels, logits.argmax(axis=1)

    return _Steps(train_step, validate, predictions)


# each task's training step and validation pass
_TASK_STEPS = {"binary_classification": _binary_steps, "multiclass_classification": _multiclass_steps}


def _sync_statistics(core) -> None:
    """Average the core's non-trainable variables (batch normalisation's moving mean and
    variance, which each rank updates from its own batches) over the ranks, so every rank
    validates, keeps and exports the same model."""
    import horovod.tensorflow as hvd

    for i, v in enumerate(core.non_trainable_variables):
        v.assign(hvd.allreduce(v, op=hvd.Average, name=f"statistic_{i}"))


def _run_epochs(plan: Plan, state: _TrainState, steps: _Steps, batches, resumed_from: int,
               history: list[dict[str, Any]]) -> list[float]:
    """Train from epoch ``resumed_from + 1`` to the last, or until early stopping; rank 0
    appends each epoch to ``history``, checkpoints it and reports it (TensorBoard, MLflow,
    stdout). Returns this process's samples per second, one per epoch."""
    import horovod.tensorflow as hvd
    import numpy as np
    import tensorflow as tf

    p, rank, n_steps = plan.manifest.params, hvd.rank(), plan.steps_per_epoch
    counters = state.counters
    metric = f"val_{METRICS[plan.manifest.task]}"
    best = f"best_{METRICS[plan.manifest.task]}"
    sync = model_kind(plan.manifest).sync_statistics
    log_mlflow = _mlflow_logger() if rank == 0 else None
    writer = None  # rank 0's TensorBoard writer, opened with the first epoch this process trains
    samples_per_epoch = n_steps * p.batch_size * hvd.size()
    rates: list[float] = []

    epoch = resumed_from
    while epoch < p.epochs and not state.count("stopped"):
        epoch += 1
        started = time.perf_counter()
        total = tf.constant(0.0)
        for _ in range(n_steps):
            features, labels = next(batches)
            total += steps.train(features, labels)
        loss = float(hvd.allreduce(total / n_steps, op=hvd.Average, name="epoch_loss").numpy())
        train_seconds = time.perf_counter() - started
        if sync:
            _sync_statistics(state.core)
        val_loss, val_score = steps.validate()
        if not (np.isfinite(val_score) and np.isfinite(loss) and np.isfinite(val_loss)):
            raise TrainingError(f"epoch {epoch}: loss={loss} val_loss={val_loss} {metric}={val_score}: "
                                "training diverged")
        rate = samples_per_epoch / train_seconds
        rates.append(rate)

        # early stopping on the validation metric (AUC, accuracy); the best weights are kept
        if val_score > float(counters[best].numpy()):
            counters[best].assign(val_score)
            counters["best_epoch"].assign(epoch)
            counters["wait"].assign(0)
            state.best.set_weights(state.core.get_weights())
        else:
            counters["wait"].assign_add(1)
        if state.count("wait") >= p.early_stopping_patience and epoch < p.epochs:
            counters["stopped"].assign(1)
        counters["epoch"].assign(epoch)

        if rank == 0:
            seconds = time.perf_counter() - started
            entry = {"epoch": epoch, "loss": loss, "val_loss": val_loss, metric: val_score,
                     "samples_per_s": rate, "seconds": seconds}
            history.append(entry)
            state.history.assign(json.dumps(history))
            state.manager.save(checkpoint_number=epoch)
            writer = writer or tf.summary.create_file_writer(str(layout.tensorboard_dir(plan.run_dir)))
            with writer.as_default(step=epoch):
                for key in ("loss", "val_loss", metric, "samples_per_s"):
                    tf.summary.scalar(key, entry[key])
            writer.flush()
            if log_mlflow:
                log_mlflow({k: entry[k] for k in ("loss", "val_loss", metric, "samples_per_s")}, epoch)
            say(f"epoch {epoch} loss={loss:.4f} val_loss={val_loss:.4f} {metric}={val_score:.4f} "
                f"samples/s={rate:.0f}")
    if writer is not None:
        writer.close()
    return rates


def _rank_hosts(hvd) -> list[dict[str, Any]]:
    """Where each rank runs, ``[{"rank": r, "host": h}, ...]`` by rank, gathered from every
    rank (a collective: all ranks call it). The host is the name horovodrun started the
    rank on (``HOROVOD_HOSTNAME``, its ``-H`` entry), else this machine's name."""
    import socket

    here = os.environ.get("HOROVOD_HOSTNAME") or socket.gethostname()
    gathered = hvd.allgather_object((hvd.rank(), here), name="rank_hosts")
    return [{"rank": int(r), "host": str(h)} for r, h in sorted(gathered)]


def _export_result(plan: Plan, state: _TrainState, preprocessor, digest: str, resumed_from: int,
                  history: list[dict[str, Any]], rates: list[float], hosts: list[dict[str, Any]]) -> None:
    """Rank 0: export the best weights as the SavedModel, then write ``result.json`` (last)."""
    import horovod.tensorflow as hvd
    import numpy as np

    m = plan.manifest
    metric = f"val_{METRICS[m.task]}"
    best_epoch = state.count("best_epoch")
    best_entry = next((h for h in history if h["epoch"] == best_epoch), {})
    # steady state: the first epoch of a process includes compiling
    steady = rates[1:] or rates or [h["samples_per_s"] for h in history[-1:]]
    metrics = {
        metric: float(state.counters[f"best_{METRICS[m.task]}"].numpy()),
        "val_loss": best_entry.get("val_loss"),
        "best_epoch": best_epoch,
        "epochs_run": state.count("epoch"),
        "stopped_early": bool(state.count("stopped")),
        "samples_per_s": float(np.mean(steady)) if steady else None,
    }
    model_kind(m).export(preprocessor, state.core, m, layout.model_root(plan.run_dir), metrics)
    result = {
        "epochs_run": metrics["epochs_run"],
        "resumed_from_epoch": resumed_from,
        "best_epoch": best_epoch,
        "stopped_early": metrics["stopped_early"],
        "history": history,
        metric: metrics[metric],
        "val_loss": metrics["val_loss"],
        "samples_per_s": metrics["samples_per_s"],
        "workers": hvd.size(),
        "hosts": hosts,
        "weights_sha256": digest,
    }
    if m.task != "binary_classification":
        result["task"] = m.task
    write_training_result(plan.run_dir, result)
    say(f"done: epochs_run={result['epochs_run']} best_epoch={best_epoch} {metric}={result[metric]:.4f} "
        f"model={layout.exported_model(plan.run_dir)}")


def train(plan: Plan, threads: int | None = None) -> int:
    """Train this rank's part of the run; rank 0 exports the best weights and writes the result.
    ``threads``: TensorFlow's intra-op and inter-op pools, else this rank's share of the cores."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import horovod.tensorflow as hvd
    import numpy as np
    import tensorflow as tf

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    m, p = plan.manifest, plan.manifest.params
    if size != len(m.shards):  # horovodrun sets HOROVOD_SIZE, so preflight usually caught this
        raise TrainingError(f"the run has {len(m.shards)} training shards but {size} workers were started")
    _configure_devices(tf, hvd, threads)  # before any TensorFlow op: it fixes the thread pools
    hosts = _rank_hosts(hvd)
    if rank == 0:
        say("ranks on hosts: " + ", ".join(f"{h['rank']}={h['host']}" for h in hosts))
    tf.random.set_seed(p.seed)
    np.random.seed(p.seed)

    data = _load_data(plan)
    kind = model_kind(m)
    preprocessor = kind.build_preprocessor(m)
    augmenter = kind.build_augmenter(m)
    val_batches = _validation_batches(data, preprocessor)
    state = _build_state(plan)
    resumed_from, history = _restore(state, m)
    steps = _step_functions(state, m, val_batches, data.val_labels)
    batches = _training_batches(plan, data, preprocessor, resumed_from + 1, augmenter)
    if rank == 0 and m.image is not None:
        _write_sample_images(plan, data, preprocessor, augmenter, resumed_from)
    rates = _run_epochs(plan, state, steps, batches, resumed_from, history)

    # the best weights are the result
    state.core.set_weights(state.best.get_weights())
    if steps.predictions is not None:
        labels, predicted = steps.predictions()  # every rank takes part in the gather
        if rank == 0:
            _write_confusion_matrix(plan, labels, predicted, state.count("best_epoch"))
    digest = weights_sha256(state.core)
    say(f"rank={rank} weights_sha256={digest}")
    if rank == 0:
        _export_result(plan, state, preprocessor, digest, resumed_from, history, rates, hosts)
    return 0


# --------------------------------------------------------------------------- TensorBoard images

CELL = 16  # pixels per cell of the confusion-matrix image


def _write_sample_images(plan: Plan, data: _RankData, preprocessor, augmenter, step: int) -> None:
    """Rank 0: the first training images of its shard as the model sees them (augmented)."""
    import tensorflow as tf

    name = plan.manifest.image.name
    images = preprocessor({name: data.columns[name][:SAMPLE_IMAGES]})["image"]
    if augmenter is not None:
        images = augmenter(images, training=True)
    with tf.summary.create_file_writer(str(layout.tensorboard_dir(plan.run_dir))).as_default(step=step):
        tf.summary.image("training_images", images, max_outputs=SAMPLE_IMAGES)


def confusion_matrix(labels, predicted, classes: int):
    """counts[i, j]: validation rows of class i predicted as class j."""
    import numpy as np

    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return counts


def _write_confusion_matrix(plan: Plan, labels, predicted, step: int) -> None:
    """Rank 0: the best weights' validation confusion matrix as an image (each row scaled by its
    class's count: bright = a large share) and as a table of counts."""
    import numpy as np
    import tensorflow as tf

    m = plan.manifest
    counts = confusion_matrix(labels, predicted, m.num_classes)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = np.kron(shares, np.ones((CELL, CELL)))[None, :, :, None].astype(np.float32)
    names = list(m.class_names)
    table = "| true \\ predicted | " + " | ".join(names) + " |\n|" + "---|" * (len(names) + 1) + "\n" + "\n".join(
        f"| {names[i]} | " + " | ".join(str(int(c)) for c in row) + " |" for i, row in enumerate(counts))
    with tf.summary.create_file_writer(str(layout.tensorboard_dir(plan.run_dir))).as_default(step=step):
        tf.summary.image("validation_confusion_matrix", image)
        tf.summary.text("validation_confusion_matrix", table)
    say(f"validation confusion matrix (rows: true class, columns: predicted): {counts.tolist()}")


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipelines.training.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="the prepared run folder")
    args = parser.parse_args(argv)
    size = os.environ.get("HOROVOD_SIZE")  # set by horovodrun: checked before TensorFlow loads
    try:
        try:
            threads = train_threads()
        except ValueError as err:
            raise TrainingError(str(err)) from None
        plan = preflight(args.run_dir.resolve(), int(size) if size else None)
        return train(plan, threads)
    except TrainingError as err:
        sys.stderr.write(f"{PREFIX} error: {err}\n")
        sys.stderr.flush()
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
