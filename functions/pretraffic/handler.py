"""PreTraffic hook: PLACEHOLDER until the parity check lands (issue 12, deliverable 2).

CodeDeploy invokes this before it shifts any traffic to the new version; whatever status
is reported decides whether the deployment goes on. This placeholder checks nothing and
reports Succeeded, so the infra synthesizes and deploys; the real handler invokes
TARGET_FUNCTION_ARN with the model's parity inputs and reports Failed below threshold.
"""

from __future__ import annotations

from typing import Any

import boto3

__all__ = ["handler"]


def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    boto3.client("codedeploy").put_lifecycle_event_hook_execution_status(
        deploymentId=event["DeploymentId"],
        lifecycleEventHookExecutionId=event["LifecycleEventHookExecutionId"],
        status="Succeeded",
    )
    return {"status": "Succeeded"}
