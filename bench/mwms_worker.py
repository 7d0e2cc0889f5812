"""One tf.distribute.MultiWorkerMirroredStrategy worker, for comparison with the factory's Horovod worker.

    TF_CONFIG='{"cluster": {"worker": ["localhost:P0", "localhost:P1"]}, "task": {"type": "worker", "index": I}}' \
    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv/ml/bin/python bench/mwms_worker.py --run-dir RUN --out OUT.json

Runs in the ML environment, one process per worker (``bench/training_bench.py`` starts them).
It trains the SAME model as ``pipelines.training.worker`` on the SAME run folder:

- the model: the manifest's model kind (``model_kind``: the tabular DNN, or the image line's
  CNN with its augmenter applied in ``tf.data`` after the preprocessor, as the worker does);
- the data: worker ``i`` reads only ``data/train/part-<i>.parquet``; each epoch is a seeded
  shuffle of row indices, full batches gathered from the columns, the preprocessor in
  ``tf.data.map``, prefetch: the Horovod worker's input pipeline;
- the step: the forward and backward pass is one function, XLA-compiled where the model kind
  compiles (the tabular DNN; not the CNN), the loss the worker's (weighted BCE, or sparse
  softmax cross-entropy for a multiclass line) scaled by 1/replicas, gradients summed across workers by
  the strategy (``CommunicationImplementation.RING``), tf_keras Adam with the manifest's
  learning rate times the number of workers (as the Horovod worker scales it);
- threads: ``cores // workers`` intra-op threads per process, or ``FACTORY_TRAIN_THREADS``
  intra-op and inter-op threads, as the Horovod worker pins them.

Throughput is timed like the Horovod worker's ``result.json``: samples per second of each
epoch's training steps (validation excluded), the mean over epochs after the first (the first
includes compiling). After training the chief (index 0) scores ``data/validation.parquet`` so
the model can be checked against the Horovod run (AUC, or accuracy for a multiclass line), then
writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--no-jit", action="store_true", help="no XLA for the forward/backward pass")
    args = ap.parse_args(argv)

    started_process = time.perf_counter()
    import numpy as np
    import pyarrow.parquet as pq
    import tensorflow as tf
    import tf_keras as keras

    from pipelines.config import train_threads
    from pipelines.training.manifest import load_manifest
    from pipelines.training.model import frame_to_features, frame_to_labels, model_kind, roc_auc

    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    workers = len(tf_config.get("cluster", {}).get("worker", [])) or 1
    index = int(tf_config.get("task", {}).get("index", 0))

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    fixed = train_threads()
    threads = fixed or max(1, cpus // workers)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(fixed or max(2, threads))

    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    replicas = strategy.num_replicas_in_sync

    m = load_manifest(args.run_dir)
    p = m.params
    kind = model_kind(m)
    multiclass = m.task == "multiclass_classification"
    if len(m.shards) != workers:
        raise SystemExit(f"the run has {len(m.shards)} shards but TF_CONFIG lists {workers} workers")
    tf.random.set_seed(p.seed)
    np.random.seed(p.seed)

    shard = pq.read_table(args.run_dir / "data" / "train" / f"part-{index:05d}.parquet").to_pandas()
    x_train, y_train = frame_to_features(shard, m), frame_to_labels(shard, m)
    del shard
    steps = min(m.shards) // p.batch_size  # every worker takes the same number of steps
    rows = len(y_train)

    preprocessor = kind.build_preprocessor(m)
    augmenter = kind.build_augmenter(m)
    columns = {name: tf.constant(values) for name, values in x_train.items()}
    targets = tf.constant(y_train)

    @tf.function(autograph=False)
    def gather(idx):
        return {name: tf.gather(col, idx) for name, col in columns.items()}, tf.gather(targets, idx)

    @tf.function(autograph=False)
    def preprocess(features, labels):
        return preprocessor(features), labels

    def augment(features, labels):
        return {**features, "image": augmenter(features["image"], training=True)}, labels

    def one_epoch(epoch):
        seed = p.seed * 1000003 + epoch * 1009 + index
        return (
            tf.data.Dataset.range(rows)
            .shuffle(rows, seed=seed, reshuffle_each_iteration=False)
            .batch(p.batch_size, drop_remainder=True)
            .take(steps)
        )

    pipeline = (
        tf.data.Dataset.range(1, p.epochs + 1)
        .flat_map(one_epoch)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    )
    if augmenter is not None:
        pipeline = pipeline.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    batches = iter(pipeline.prefetch(tf.data.AUTOTUNE))

    with strategy.scope():
        core = kind.build_core(m)
        optimizer = keras.optimizers.Adam(learning_rate=p.learning_rate * workers)
        optimizer.build(core.trainable_variables)

    pos_weight = float(m.positive_weight)

    def weighted_bce(labels, logits):
        per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        return tf.reduce_mean(per_example * (1.0 + (pos_weight - 1.0) * labels))

    def forward(features, labels):
        if multiclass:
            logits = core(features, training=True)["logits"]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        else:
            loss = weighted_bce(labels, core(features, training=True)[:, 0])
        return loss / replicas

    jit = kind.jit_compile and not args.no_jit
    forward_fn = tf.function(forward, jit_compile=jit, autograph=False)

    def step_fn(features, labels):
        with tf.GradientTape() as tape:
            loss = forward_fn(features, labels)
        grads = tape.gradient(loss, core.trainable_variables)
        optimizer.apply_gradients(
            zip(grads, core.trainable_variables, strict=True)
        )  # all-reduce (sum) across workers
        return loss

    @tf.function(autograph=False)
    def train_step(features, labels):
        per_replica = strategy.run(step_fn, args=(features, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    history = []
    rates = []
    samples_per_epoch = steps * p.batch_size * workers
    for epoch in range(1, p.epochs + 1):
        started = time.perf_counter()
        total = tf.constant(0.0)
        for _ in range(steps):
            features, labels = next(batches)
            total += train_step(features, labels)
        loss = float(total.numpy()) / steps
        seconds = time.perf_counter() - started
        rate = samples_per_epoch / seconds
        rates.append(rate)
        history.append({"epoch": epoch, "loss": loss, "samples_per_s": rate, "seconds": seconds})
        if index == 0:
            sys.stdout.write(f"mwms: epoch {epoch} loss={loss:.4f} samples/s={rate:.0f}\n")
            sys.stdout.flush()

    # Every worker scores the validation rows: a model with batch normalisation all-reduces
    # inside its call under the strategy, and a chief calling it alone would wait for peers
    # that have exited.
    val = pq.read_table(args.run_dir / "data" / "validation.parquet").to_pandas()
    x_val, y_val = frame_to_features(val, m), frame_to_labels(val, m)
    feats = preprocessor({k: tf.constant(v) for k, v in x_val.items()})
    out = core(feats, training=False)
    if multiclass:
        score_name, score = "val_accuracy_last_epoch", float((out["logits"].numpy().argmax(axis=1) == y_val).mean())
    else:
        score_name, score = "val_auc_last_epoch", roc_auc(y_val, out.numpy()[:, 0])
    if index == 0:
        steady = rates[1:] or rates
        result = {
            "workers": workers,
            "replicas": replicas,
            "threads_per_worker": threads,
            "jit_compile": jit,
            "steps_per_epoch": steps,
            "samples_per_epoch": samples_per_epoch,
            "history": history,
            "samples_per_s": float(np.mean(steady)),
            score_name: score,
            "process_s": time.perf_counter() - started_process,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
