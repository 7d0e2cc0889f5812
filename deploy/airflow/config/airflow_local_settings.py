"""Cluster policy of the scale-out deployment: training on the GPU queue.

Copied into ``$AIRFLOW_HOME/config/`` by ``deploy/airflow/Dockerfile`` (Airflow puts
that folder on ``sys.path`` and imports this module at start-up). The dag-processor
applies :func:`task_policy` to every task it parses, so the queue is stored with the
serialized DAG and the scheduler sends those tasks to the workers that listen on it.

``FACTORY_TRAIN_QUEUE`` (e.g. ``gpu``) sends the Horovod ``train`` task of every
``train_<line>`` DAG to that Celery queue, served by ``airflow-worker-gpu``
(``celery worker --queues gpu``). Unset or empty: nothing changes. A queue set
explicitly on the task in the DAG file wins: only tasks still on the default queue
are moved.
"""

from __future__ import annotations

import os


def task_policy(task) -> None:
    queue = os.environ.get("FACTORY_TRAIN_QUEUE", "").strip()
    if not queue:
        return
    if not (task.dag_id or "").startswith("train_") or task.task_id != "train":
        return
    from airflow.configuration import conf

    if task.queue == conf.get("operators", "default_queue"):
        task.queue = queue
