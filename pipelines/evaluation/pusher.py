"""TFX's Pusher, pushing into the factory's serving store (ML environment).

:class:`ServingStorePusher` is the stock ``tfx.components.Pusher`` component (same spec,
inputs, ``PushedModel`` output and MLMD lineage) whose executor subclasses the stock
filesystem executor and changes two things:

* **Versions and atomicity.** The stock executor copies the model straight into
  ``<base>/<unix time>/`` (TF Serving could load a half-copied version, and two pushes in
  the same second collide). Here the copy goes to a hidden ``.incoming-*`` directory,
  is fsynced, and is renamed to the next integer version under a lock
  (:func:`pipelines.evaluation.serving.publish`). ``push_destination.filesystem.base_directory``
  is the line's directory in the store; its ``versioning`` is ignored.
* **Force-bless.** ``custom_config["force_bless_reason"]``, non-empty, pushes a model the
  Evaluator did not bless; the ``PushedModel`` artifact records ``forced=1`` and the reason.
  Without a reason a model that is not blessed is never pushed (as in the stock executor).

The stock executor also archives a copy of the model under the ``PushedModel``
artifact's URI; this one writes ``push.json`` there instead (the model already lives in
the run folder and in the store).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import json_utils, proto_utils

from pipelines.evaluation import serving

FORCED_KEY = "forced"
FORCE_REASON_KEY = "force_bless_reason"


class ServingStorePusherExecutor(pusher_executor.Executor):
    """Push a blessed (or force-blessed) model into ``<store>/<line>/<n>/``, atomically."""

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        config = json_utils.loads(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null") or {}
        reason = str(config.get(FORCE_REASON_KEY) or "").strip()
        blessed = self.CheckBlessing(input_dict)
        if not blessed and not reason:
            self._MarkNotPushed(model_push)
            return

        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem" or not destination.filesystem.base_directory:
            raise ValueError("ServingStorePusher needs push_destination.filesystem.base_directory")
        base = Path(destination.filesystem.base_directory)

        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        blessings = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY) or []
        blessing = blessings[0] if blessings else None
        info = {
            "blessing": "BLESSED" if blessed else "FORCED",
            FORCE_REASON_KEY: None if blessed else reason,
            "model_uri": model.uri,
            "mlmd_model_id": model.id,
            "mlmd_blessing_id": blessing.id if blessing is not None else None,
            **{k: v for k, v in (config.get("info") or {}).items()},
        }
        version, path = serving.publish(Path(self.GetModelPath(input_dict)), base, info)

        os.makedirs(model_push.uri, exist_ok=True)
        with open(os.path.join(model_push.uri, "push.json"), "w") as fh:
            json.dump({**info, "version": version, "path": str(path)}, fh, indent=2)
        self._MarkPushed(model_push, pushed_destination=str(path), pushed_version=str(version))
        model_push.set_int_custom_property(FORCED_KEY, 0 if blessed else 1)
        if not blessed:
            model_push.set_string_custom_property(FORCE_REASON_KEY, reason)


class ServingStorePusher(pusher_component.Pusher):
    """``tfx.components.Pusher`` with :class:`ServingStorePusherExecutor`."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ServingStorePusherExecutor)


def push_destination(base: Path) -> pusher_pb2.PushDestination:
    return pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base)))
