"""Records when each task's own work starts and ends (wiring only; the logic and the
record are :mod:`pipelines.runtime.timing`): an Airflow listener, called in the task
process right before the operator executes and once it has finished."""

from __future__ import annotations

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin


class _WorkTimer:
    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance):
        from pipelines.runtime import timing

        timing.work_started(task_instance)

    @hookimpl
    def on_task_instance_success(self, previous_state, task_instance):
        from pipelines.runtime import timing

        timing.work_ended(task_instance, "success")

    @hookimpl
    def on_task_instance_failed(self, previous_state, task_instance, error):
        from pipelines.runtime import timing

        timing.work_ended(task_instance, "failed")

    @hookimpl
    def on_task_instance_skipped(self, previous_state, task_instance):
        from pipelines.runtime import timing

        timing.work_ended(task_instance, "skipped")


class FactoryTimingPlugin(AirflowPlugin):
    name = "factory_timing"
    listeners = [_WorkTimer()]
