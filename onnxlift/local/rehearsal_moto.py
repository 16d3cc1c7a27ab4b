"""moto server for the deploy rehearsal, with its CloudFormation made to say what it skipped.

`python -m onnxlift.local.rehearsal_moto RECORD moto.server-args...` runs moto server with three
changes, all in this file and all printed by `onnxlift deploy-local`:

1. Record and go on. moto 5.2.5's CloudFormation already skips resource types it does not
   implement (a warning in its log, nothing in the API). A resource whose creation raises
   (moto's handler has a gap, or a property refers to a skipped resource) would instead fail the
   whole CreateStack with a 500, and what ran before it stays half made. Here such a resource is
   left out too. Every resource left out, either way, is appended to RECORD (JSON lines: logical
   id, type, moto's exception or null) so that the rehearsal can name it and why.
2. MOCK integrations. moto's CloudFormation handler for AWS::ApiGateway::Method reads
   Integration.IntegrationHttpMethod and Integration.Uri unconditionally (KeyError); a MOCK
   integration has neither (CloudFormation: "If you specify MOCK ... don't specify" Uri). The
   handler is given both as null, exactly what moto's own PutIntegration API accepts for MOCK;
   without it each MOCK method would be left with a method and no integration.
3. SageMaker instance types. moto's CreateEndpointConfig checks the instance type against a list
   that stops at ml.g4dn (ml.g5.xlarge, the shipped GPU endpoint's, is refused); moto has a
   second, newer list of real-time inference types (ModelPackage's), which has the g5 family.
   A type refused by the first is accepted if the second has it, and refused otherwise. Without
   it the EndpointConfig and the Endpoint are not created and, one step further, moto's
   DescribeStacks fails (500) on the output that reads the Endpoint's name.

Nothing else of moto changes: what moto creates is moto's record of the resource, no more.
"""

from __future__ import annotations

import copy
import json
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["main"]

_lock = threading.Lock()


def _record(path: Path, stack: str, logical_id: str, resource_type: str, error: str | None) -> None:
    entry = {"stack": stack, "logical_id": logical_id, "type": resource_type, "error": error}
    line = json.dumps(entry)
    with _lock, path.open("a") as handle:
        handle.write(line + "\n")


def _install_recorder(path: Path) -> None:
    from moto.cloudformation import parsing

    create = parsing.parse_and_create_resource

    def recorded(
        logical_id: str,
        resource_json: dict[str, Any],
        resources_map: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        resource_type = str(resource_json.get("Type"))
        stack = str(resources_map["AWS::StackName"])
        try:
            resource = create(logical_id, resource_json, resources_map, *args, **kwargs)
        except Exception as error:  # moto's handlers raise anything
            _record(path, stack, logical_id, resource_type, repr(error))
            return None
        if resource is None:
            _record(path, stack, logical_id, resource_type, None)
        return resource

    parsing.parse_and_create_resource = recorded  # __getitem__ looks it up by name


def _install_mock_integration() -> None:
    from moto.apigateway.models import Method

    create = Method.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def with_mock(
        cls: type, name: str, cloudformation_json: dict[str, Any], *a: Any, **k: Any
    ) -> Any:
        integration = cloudformation_json.get("Properties", {}).get("Integration") or {}
        if integration.get("Type") == "MOCK":
            cloudformation_json = copy.deepcopy(cloudformation_json)
            fields = cloudformation_json["Properties"]["Integration"]
            fields.setdefault("IntegrationHttpMethod", None)
            fields.setdefault("Uri", None)
        return create(cls, name, cloudformation_json, *a, **k)

    Method.create_from_cloudformation_json = classmethod(with_mock)  # type: ignore[method-assign,assignment]


def _install_instance_types() -> None:
    from moto.sagemaker.models import FakeEndpointConfig, ModelPackage

    validate = FakeEndpointConfig.validate_instance_type

    def newer_list_too(self: FakeEndpointConfig, instance_type: str) -> None:
        try:
            validate(self, instance_type)
        except Exception:
            try:
                ModelPackage.validate_supported_realtime_inference_instance_types([instance_type])
            except Exception:
                pass
            else:
                return
            raise

    FakeEndpointConfig.validate_instance_type = newer_list_too  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m onnxlift.local.rehearsal_moto RECORD [moto.server args]")
    _install_recorder(Path(argv[0]))
    _install_mock_integration()
    _install_instance_types()
    from moto.server import main as moto_main

    moto_main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
