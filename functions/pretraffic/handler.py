"""The PreTraffic hook of a model function's CodeDeploy deployment: parity where it runs.

Before any traffic shifts, the new function version answers the parity set its model version
was built with (assets/parity.json in the registry: V2 requests, the source framework's
outputs, the spec's metric and threshold) on whatever CPU Lambda gives it; below the
threshold the deployment fails and CodeDeploy rolls it back.

A zip asset (handler.handler, python3.12) with boto3 only, which the runtime provides: the
stack bundles this file with the serving runtime's plain-Python modules it imports
(infra.rollout.HOOK_SERVING_MODULES: the contract, the parity math the build's gate uses and
the manifest signature check the serving function applies), so each check has one copy.

With signing on (MODEL_SIGNATURE_KEY), the version's manifest must verify with the
deployment's key before its parity set is trusted: whoever can write the bucket but not sign
cannot pass a deployment with a parity set of their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from onnxlift_serving.contract import JSON_CONTENT_TYPE, Env, infer_path, signature_required
from onnxlift_serving.layout import MANIFEST_FILE, SIGNATURE_FILE, version_prefix
from onnxlift_serving.signing import SignaturePolicy, open_key, read_signature
from onnxlift_serving.verify import PARITY_SET_ASSET, VerifyResult, read_parity_set, verify

__all__ = ["handler", "lambda_invoker", "parity_set", "proxy_event", "run_hook"]

log = logging.getLogger()
log.setLevel(os.environ.get("LOG_LEVEL", "INFO"))

INFER_ROUTE = infer_path("{name}", "{version}")  # the resource of the versioned infer route

Invoke = Callable[[dict[str, Any]], Mapping[str, Any]]  # proxy event in, proxy result out


class HookError(Exception):
    """Why the version could not be checked: the deployment fails with this line."""


def parity_set(
    s3: Any, bucket: str, name: str, version: str, signature: SignaturePolicy | None = None
) -> dict[str, Any]:
    """The version's parity set from the registry, checked against its manifest's sha256,
    and the manifest against `signature` (the deployment's key) when signing is on."""
    prefix = version_prefix(name, version)
    raw_manifest = bytes(s3.get_object(Bucket=bucket, Key=prefix + MANIFEST_FILE)["Body"].read())
    if signature is not None:
        where = f"{name} version {version}"
        signature.check(raw_manifest, read_signature(s3, bucket, prefix + SIGNATURE_FILE), where)
    manifest = json.loads(raw_manifest)
    # The signature covers the bytes, not where they lie: a manifest signed for another model
    # or version, copied here with its parity set, must not pass for this one.
    if (manifest.get("name"), str(manifest.get("version"))) != (name, version):
        raise HookError(
            f"{name} version {version}: its manifest names {str(manifest.get('name'))[:64]} "
            f"version {str(manifest.get('version'))[:16]}"
        )
    digest = (manifest.get("assets") or {}).get(PARITY_SET_ASSET)
    if not digest:
        raise HookError(f"{name} version {version} holds no parity set: rebuild and publish it")
    raw = s3.get_object(Bucket=bucket, Key=f"{prefix}assets/{PARITY_SET_ASSET}")["Body"].read()
    if hashlib.sha256(raw).hexdigest() != digest:
        raise HookError(f"{name} version {version}: the parity set's sha256 does not match")
    return read_parity_set(raw)


def proxy_event(name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
    """An API Gateway REST proxy event for POST of `body` to the versioned infer route."""
    path = INFER_ROUTE.format(name=name, version=version)
    headers = {"Content-Type": JSON_CONTENT_TYPE, "User-Agent": "onnxlift-pretraffic"}
    return {
        "resource": INFER_ROUTE,
        "path": path,
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"name": name, "version": version},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": INFER_ROUTE,
            "httpMethod": "POST",
            "path": path,
            "stage": "pretraffic",
            "requestId": "pretraffic",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "onnxlift-pretraffic"},
        },
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def _answer(result: Mapping[str, Any]) -> dict[str, Any]:
    """The V2 answer in a proxy result; anything else is a HookError with what came back."""
    status, body = result.get("statusCode"), result.get("body") or ""
    if result.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8", "replace")
    if status != 200:
        raise HookError(f"the new version answered {status}: {str(body)[:300]}")
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise HookError("the new version answered JSON that is not a V2 answer")
    return doc


# Stop this long before the hook's own timeout: a hook Lambda kills never reports, and
# CodeDeploy then waits an hour for it. Each invoke is sent once (no botocore retry: a read
# timeout would otherwise invoke the target again) and may take the target's whole timeout.
DEADLINE_MARGIN_S = 20
INVOKE_READ_TIMEOUT_S = 60  # over any API-invoked function's timeout (29 s at most)


def lambda_client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(read_timeout=INVOKE_READ_TIMEOUT_S, retries={"total_max_attempts": 1})
    return boto3.client("lambda", config=config)


def within_deadline(invoke: Invoke, context: Any) -> Invoke:
    """`invoke`, refused once less than DEADLINE_MARGIN_S of this hook's time is left."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)

    def bounded(event: dict[str, Any]) -> Mapping[str, Any]:
        if remaining is not None and remaining() < DEADLINE_MARGIN_S * 1000:
            raise HookError("the hook ran out of time before every parity input was answered")
        return invoke(event)

    return bounded


def lambda_invoker(client: Any, function_arn: str) -> Invoke:
    """Invoke the function version synchronously; its proxy result."""

    def invoke(event: dict[str, Any]) -> Mapping[str, Any]:
        reply = client.invoke(FunctionName=function_arn, Payload=json.dumps(event).encode())
        payload = json.loads(reply["Payload"].read() or b"null")
        if reply.get("FunctionError") or not isinstance(payload, dict):
            raise HookError(f"the new version failed: {str(payload)[:300]}")
        return payload

    return invoke


def signature_policy(env: Mapping[str, str], kms: Any = None) -> SignaturePolicy | None:
    """The serving function's signature check, from the same settings (contract's Env)."""
    key = env.get(Env.MODEL_SIGNATURE_KEY, "")
    if not key:
        return None
    return SignaturePolicy(open_key(key, kms_client=kms), signature_required(env))


def run_hook(
    env: Mapping[str, str], s3: Any, invoke: Invoke, signature: SignaturePolicy | None = None
) -> VerifyResult:
    """Fetch the parity set of the deployed model version (its manifest's signature checked
    when `signature` is given) and replay it through `invoke`."""
    name, version = env[Env.MODEL_NAME], env[Env.MODEL_VERSION]
    doc = parity_set(s3, env[Env.REGISTRY_BUCKET], name, version, signature)
    return verify(doc, lambda body: _answer(invoke(proxy_event(name, version, body))))


def handler(
    event: dict[str, Any],
    context: Any,
    *,
    clients: Mapping[str, Any] | None = None,
    invoke: Invoke | None = None,
) -> dict[str, str]:
    """CodeDeploy's hook: check, then report Succeeded or Failed for the deployment.
    `clients` (s3, codedeploy, lambda, and kms where signing is on) and `invoke` default to
    boto3's and the target's."""
    if clients is None:
        import boto3

        clients = {"s3": boto3.client("s3"), "codedeploy": boto3.client("codedeploy")}
        clients = {**clients, "lambda": lambda_client()}
    env = os.environ
    what = f"{env.get(Env.MODEL_NAME)} version {env.get(Env.MODEL_VERSION)}"
    try:
        invoke = invoke or lambda_invoker(clients["lambda"], env[Env.TARGET_FUNCTION_ARN])
        signature = signature_policy(env, clients.get("kms"))
        result = run_hook(env, clients["s3"], within_deadline(invoke, context), signature)
        status, line = ("Succeeded" if result.passed else "Failed"), result.line(what)
    except Exception as exc:  # anything that stops the check fails the deployment
        status, line = "Failed", f"{what}: parity could not be checked: {exc}"
    (log.info if status == "Succeeded" else log.error)(line)
    clients["codedeploy"].put_lifecycle_event_hook_execution_status(
        deploymentId=event["DeploymentId"],
        lifecycleEventHookExecutionId=event["LifecycleEventHookExecutionId"],
        status=status,
    )
    return {"status": status, "message": line}
