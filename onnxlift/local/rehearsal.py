"""The deploy rehearsal: the real cdk CLI (`bootstrap`, `deploy`) against moto server, ECR mode.

What it runs, on this machine only (moto on 127.0.0.1, addressed as `localhost`: moto reads a
path-style S3 bucket only under that host name, and cdk publishes its assets path-style):

    cdk bootstrap aws://ACCOUNT/REGION
    cdk deploy Onnxlift-<env> --method=direct -c onnxlift.image_source=ecr
        -c onnxlift.ecr_repository_name=onnxlift --require-approval=never

`--method=direct` (CreateStack, not a change set) because moto's ExecuteChangeSet creates
resources in template order and ignores DependsOn, so the API's Deployment would come before its
Methods (moto: "no methods"); its CreateStack follows DependsOn, as CloudFormation does. ECR
mode: the Lambda functions name images in a repository and nothing is built; the file assets
(the hook and proxy code) go to the bootstrap bucket.

The report is moto's: what its CloudFormation lists as created (with the physical id), checked
one by one against the service's own API where there is a read call for the type, and every
template resource it did not create, by name, with moto's reason (onnxlift.local.rehearsal_moto).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxlift_serving import contract

from onnxlift.errors import OnnxliftError
from onnxlift.local.moto_server import LOCAL_CREDENTIALS
from onnxlift.local.processes import Child, base_env, free_port, start_child, tail, wait_http

__all__ = [
    "REHEARSAL_CONTEXT",
    "Created",
    "NotCreated",
    "Rehearsal",
    "format_report",
    "rehearse",
]

REHEARSAL_CONTEXT = ("onnxlift.image_source=ecr", "onnxlift.ecr_repository_name=onnxlift")
MOTO_FIXES = (
    "a resource whose creation raises is left out and recorded, not a 500 for the whole stack",
    "AWS::ApiGateway::Method with a MOCK integration: IntegrationHttpMethod and Uri given as "
    "null (moto's handler requires both; MOCK has neither)",
    "AWS::SageMaker::EndpointConfig: an instance type outside moto's EndpointConfig list is "
    "accepted if moto's newer real-time inference list has it (ml.g5.xlarge)",
)


@dataclass(frozen=True)
class Created:
    logical_id: str
    type: str
    physical_id: str
    verified: bool | None  # by the service's own API; None: no read call used for this type
    check_error: str = ""  # what the service answered when it could not read the resource back


@dataclass(frozen=True)
class NotCreated:
    logical_id: str
    type: str
    reason: str


@dataclass
class Rehearsal:
    stack: str
    status: str
    template_resources: int
    created: list[Created] = field(default_factory=list)
    not_created: list[NotCreated] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    outputs_missing: list[str] = field(default_factory=list)  # in the template, not in moto's
    api: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rehearse(
    root: Path, workdir: Path, *, env: str = "dev", port: int | None = None, timeout: float = 600
) -> Rehearsal:
    """Start moto, bootstrap, deploy, read back; moto is stopped whatever happens."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    record = workdir / "not-created.jsonl"
    port = port or free_port()
    moto = _start_moto(record, port, workdir / "moto.log")
    try:
        return _run(root, workdir, record, f"http://localhost:{port}", env, timeout)
    finally:
        moto.stop()


def _start_moto(record: Path, port: int, log: Path) -> Child:
    args = ["-m", "onnxlift.local.rehearsal_moto", str(record), "-H", "127.0.0.1", "-p", str(port)]
    child = start_child("moto", args, log=log, env=base_env())
    try:
        wait_http(child, f"http://127.0.0.1:{port}/moto-api/", timeout=30)
    except BaseException:
        child.stop()
        raise
    return child


def _run(
    root: Path, workdir: Path, record: Path, endpoint: str, env: str, timeout: float
) -> Rehearsal:
    aws = _aws_env(endpoint)
    clients = _Clients(aws)
    account = clients("sts").get_caller_identity()["Account"]
    region = aws["AWS_REGION"]
    stack = contract.stack_name(env)
    out = workdir / "cdk.out"
    seconds: dict[str, float] = {}
    started = time.monotonic()
    _cdk(root, aws, ["bootstrap", f"aws://{account}/{region}"], workdir / "bootstrap.log", timeout)
    seconds["bootstrap"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    context = [f"onnxlift.env={env}", *REHEARSAL_CONTEXT]
    deploy = ["deploy", stack, "--method=direct", "--require-approval=never", "-o", str(out)]
    _cdk(
        root,
        aws,
        [*deploy, *(a for c in context for a in ("-c", c))],
        workdir / "deploy.log",
        timeout,
    )
    seconds["deploy"] = round(time.monotonic() - started, 1)
    template = json.loads((out / f"{stack}.template.json").read_text())
    rehearsal = _read_back(clients, stack, template["Resources"], _records(record, stack), seconds)
    rehearsal.outputs_missing = sorted(set(template.get("Outputs", {})) - set(rehearsal.outputs))
    return rehearsal


def _aws_env(endpoint: str) -> dict[str, str]:
    """moto's endpoint and throwaway credentials; no profile or config file of the user's is read,
    so nothing here can reach a real account."""
    env = {k: v for k, v in base_env().items() if not k.startswith(("AWS_", "CDK_"))}
    return (
        env
        | LOCAL_CREDENTIALS
        | {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "CDK_DISABLE_VERSION_CHECK": "1",
            "CDK_DISABLE_CLI_TELEMETRY": "true",
        }
    )


def _cdk(root: Path, env: dict[str, str], args: list[str], log: Path, timeout: float) -> None:
    """The project's cdk CLI (node_modules); its app (cdk.json: python app.py) runs on this
    Python."""
    cdk = root / "node_modules" / ".bin" / "cdk"
    if not cdk.is_file():
        raise OnnxliftError("no node_modules/.bin/cdk: run `make setup` (npm ci) first")
    env = env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    command = [str(cdk), *args, "--no-notices", "--no-version-reporting", "--ci"]
    with log.open("wb") as handle:
        try:
            done = subprocess.run(
                command, cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise OnnxliftError(f"cdk {args[0]} ran over {timeout:.0f}s:\n{tail(log)}") from None
    if done.returncode != 0:
        raise OnnxliftError(f"cdk {args[0]} failed ({done.returncode}):\n{tail(log, 30)}")


class _Clients:
    def __init__(self, env: dict[str, str]) -> None:
        import boto3

        self._session = boto3.session.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        )
        self._endpoint = env["AWS_ENDPOINT_URL"]
        self._cache: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if service not in self._cache:
            self._cache[service] = self._session.client(service, endpoint_url=self._endpoint)
        return self._cache[service]


def _read_back(
    clients: _Clients,
    stack: str,
    template: dict[str, Any],
    records: dict[str, str | None],
    seconds: dict[str, float],
) -> Rehearsal:
    cloudformation = clients("cloudformation")
    description = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    pages = cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack)
    # moto lists a resource it skipped as an entry with no logical id; those are left out.
    listed = {
        r["LogicalResourceId"]: r
        for page in pages
        for r in page["StackResourceSummaries"]
        if r.get("LogicalResourceId")
    }
    created = []
    for logical_id, entry in listed.items():
        physical_id = entry.get("PhysicalResourceId") or ""
        error = _verify(clients, entry["ResourceType"], physical_id)
        created.append(
            Created(
                logical_id=logical_id,
                type=entry["ResourceType"],
                physical_id=physical_id,
                verified=None if error is None else not error,
                check_error=error or "",
            )
        )
    return Rehearsal(
        stack=stack,
        status=description["StackStatus"],
        template_resources=len(template),
        created=sorted(created, key=lambda c: (c.type, c.logical_id)),
        not_created=_not_created(template, set(listed), records),
        outputs={o["OutputKey"]: str(o.get("OutputValue")) for o in description.get("Outputs", [])},
        api=_api_summary(clients, listed),
        seconds=seconds,
    )


def _records(path: Path, stack: str) -> dict[str, str | None]:
    """moto's own account of each skip in `stack`: logical id -> its exception (None: moto has
    no CloudFormation support for the type). The first record of each counts."""
    records: dict[str, str | None] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["stack"] == stack:
                records.setdefault(entry["logical_id"], entry["error"])
    return records


def _references(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        if "Ref" in value and isinstance(value["Ref"], str):
            yield value["Ref"]
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            yield target[0] if isinstance(target, list) else str(target).split(".")[0]
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _not_created(
    template: dict[str, Any], created: set[str], records: dict[str, str | None]
) -> list[NotCreated]:
    missing = [name for name in template if name not in created]
    result = []
    for name in missing:
        resource_type = template[name]["Type"]
        if name not in records:
            reason = "not created (moto recorded no reason)"
        elif records[name] is None:
            reason = f"moto has no CloudFormation support for {resource_type}"
        else:
            reason = f"moto raised {records[name]}"
            absent = sorted({r for r in _references(template[name]) if r in missing})
            if absent:
                reason += f"; it refers to {', '.join(absent)} (not created)"
        result.append(NotCreated(name, resource_type, reason))
    return sorted(result, key=lambda n: (n.type, n.logical_id))


def _check(call: Callable[[], Any]) -> str:
    """ "" if the call answers; else the first line of its error (a 500 from moto: its status)."""
    try:
        call()
    except Exception as error:
        response = getattr(error, "response", None) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"HTTP {status}: {text[:120]}" if status else text[:160]
    return ""


def _verify(clients: _Clients, resource_type: str, physical_id: str) -> str | None:
    """Whether the service itself (not CloudFormation) reads the resource back: "" yes, else its
    error; None: no read call is used for this type."""
    if not physical_id:
        return None
    name = physical_id.rsplit("/", 1)[-1]
    checks: dict[str, Callable[[], Any]] = {
        "AWS::S3::Bucket": lambda: clients("s3").head_bucket(Bucket=physical_id),
        "AWS::Lambda::Function": lambda: clients("lambda").get_function(FunctionName=physical_id),
        "AWS::IAM::Role": lambda: clients("iam").get_role(RoleName=physical_id),
        "AWS::Logs::LogGroup": lambda: _log_group(clients, physical_id),
        "AWS::ApiGateway::RestApi": lambda: clients("apigateway").get_rest_api(
            restApiId=physical_id
        ),
        "AWS::SageMaker::Model": lambda: clients("sagemaker").describe_model(ModelName=name),
        "AWS::SageMaker::EndpointConfig": lambda: clients("sagemaker").describe_endpoint_config(
            EndpointConfigName=name
        ),
        "AWS::SageMaker::Endpoint": lambda: clients("sagemaker").describe_endpoint(
            EndpointName=name
        ),
        "AWS::CloudWatch::Dashboard": lambda: clients("cloudwatch").get_dashboard(
            DashboardName=physical_id
        ),
        "AWS::SNS::Topic": lambda: clients("sns").get_topic_attributes(TopicArn=physical_id),
        "AWS::KMS::Key": lambda: clients("kms").describe_key(KeyId=physical_id),
    }
    check = checks.get(resource_type)
    return None if check is None else _check(check)


def _log_group(clients: _Clients, name: str) -> None:
    groups = clients("logs").describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    if not any(g["logGroupName"] == name for g in groups):
        raise LookupError(name)


def _api_summary(clients: _Clients, listed: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The REST API as API Gateway itself reports it: resources, methods, deployments, stages."""
    apis = [e for e in listed.values() if e["ResourceType"] == "AWS::ApiGateway::RestApi"]
    if not apis:
        return {}
    api_id = apis[0]["PhysicalResourceId"]
    gateway = clients("apigateway")
    items = gateway.get_resources(restApiId=api_id, embed=["methods"], limit=500)["items"]
    return {
        "resources": len(items),
        "methods": sum(len(item.get("resourceMethods") or {}) for item in items),
        "deployments": len(gateway.get_deployments(restApiId=api_id)["items"]),
        "stages": len(gateway.get_stages(restApiId=api_id)["item"]),
    }


def format_report(rehearsal: Rehearsal) -> str:
    """What `onnxlift deploy-local` prints: created, checked, not created (by name), outputs."""
    lines = [
        f"stack {rehearsal.stack}: {rehearsal.status} in moto; cdk bootstrap "
        f"{rehearsal.seconds.get('bootstrap')}s, cdk deploy {rehearsal.seconds.get('deploy')}s",
        f"created by moto's CloudFormation: {len(rehearsal.created)} of "
        f"{rehearsal.template_resources} template resources",
    ]
    for c in rehearsal.created:
        mark = {True: "checked", False: f"NOT readable by its service ({c.check_error})", None: ""}
        lines.append(
            f"  {c.type:<34} {c.logical_id:<60} {c.physical_id}  {mark[c.verified]}".rstrip()
        )
    checked = [c for c in rehearsal.created if c.verified is not None]
    lines.append(
        f"checked by the service's own API: {sum(bool(c.verified) for c in checked)} of "
        f"{len(checked)} ({', '.join(sorted({c.type for c in checked}))})"
    )
    if rehearsal.api:
        lines.append(
            "API Gateway itself reports: " + ", ".join(f"{v} {k}" for k, v in rehearsal.api.items())
        )
    lines.append(
        f"NOT created: {len(rehearsal.not_created)} (none of these exists in moto; why, by name)"
    )
    counts: dict[str, int] = {}
    for n in rehearsal.not_created:
        counts[n.type] = counts.get(n.type, 0) + 1
    lines += [f"  {count:>3} {kind}" for kind, count in sorted(counts.items())]
    lines += [f"  {n.type:<34} {n.logical_id}: {n.reason}" for n in rehearsal.not_created]
    lines.append("moto fixes in force (onnxlift/local/rehearsal_moto.py):")
    lines += [f"  - {fix}" for fix in MOTO_FIXES]
    lines.append("stack outputs, as moto renders them (a Ref to a resource it skipped is None):")
    lines += [f"  {k} = {v}" for k, v in sorted(rehearsal.outputs.items())]
    if rehearsal.outputs_missing:
        lines.append(f"outputs moto left out: {', '.join(rehearsal.outputs_missing)}")
    return "\n".join(lines)
