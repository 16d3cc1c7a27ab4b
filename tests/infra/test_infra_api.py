"""The REST API: routes, API key + usage plan, stage logging, validation, errors, WAF."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match


def resource_paths(synth) -> dict[str, str]:
    """logical id of each AWS::ApiGateway::Resource (and the root) -> its full path."""
    api_id = synth.logical_id(synth.stack.api.api)
    resources = synth.of_type("AWS::ApiGateway::Resource")
    paths: dict[str, str] = {}

    def path_of(logical_id: str) -> str:
        if logical_id not in paths:
            props = resources[logical_id]["Properties"]
            parent = props["ParentId"]
            if parent == {"Fn::GetAtt": [api_id, "RootResourceId"]}:
                paths[logical_id] = "/" + props["PathPart"]
            else:
                paths[logical_id] = path_of(parent["Ref"]) + "/" + props["PathPart"]
        return paths[logical_id]

    for logical_id in resources:
        path_of(logical_id)
    return paths


def routes(synth) -> dict[tuple[str, str], dict[str, Any]]:
    """(HTTP method, path) -> method properties."""
    paths = resource_paths(synth)

    def path(resource_id: dict[str, Any]) -> str:
        return paths[resource_id["Ref"]] if "Ref" in resource_id else "/"  # GetAtt: the root

    return {
        (m["Properties"]["HttpMethod"], path(m["Properties"]["ResourceId"])): m["Properties"]
        for m in synth.of_type("AWS::ApiGateway::Method").values()
    }


def model_routes(name: str) -> set[tuple[str, str]]:
    base = f"/v2/models/{name}"
    return {
        ("GET", base),
        ("GET", f"{base}/ready"),
        ("POST", f"{base}/infer"),
        ("GET", f"{base}/versions/{{version}}"),
        ("GET", f"{base}/versions/{{version}}/ready"),
        ("GET", f"{base}/config"),
        ("GET", f"{base}/versions/{{version}}/config"),
        ("POST", f"{base}/versions/{{version}}/infer"),
    }


def not_allowed_routes(*names: str) -> set[tuple[str, str]]:
    """A JSON 405 (ANY) on every resource that has routes."""
    return {("ANY", path) for name in names for _, path in model_routes(name) | HEALTH_ROUTES}


def no_route_routes(*names: str) -> set[tuple[str, str]]:
    """A JSON 404 (ANY) on the root, a catch-all and every resource that only leads on."""
    paths = {"/", "/{proxy+}", "/v2/health", "/v2/models"}  # /v2 is a route: GET /v2
    return {("ANY", p) for p in paths | {f"/v2/models/{n}/versions" for n in names}}


NOT_FOUND_ROUTES = {("ANY", "/v2/models/{name}"), ("ANY", "/v2/models/{name}/{proxy+}")}
HEALTH_ROUTES = {("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/v2")}


def lambda_target(method: dict[str, Any]) -> str:
    """The logical id of what a proxy integration invokes: a model function's alias (its Ref
    is the alias ARN), or a function (GetAtt Arn) for a SageMaker proxy."""
    integration = method["Integration"]
    assert integration["Type"] == "AWS_PROXY"
    assert integration["IntegrationHttpMethod"] == "POST"
    (target,) = [
        part["Fn::GetAtt"][0] if "Fn::GetAtt" in part else part["Ref"]
        for part in integration["Uri"]["Fn::Join"][1]
        if isinstance(part, dict)
        and ("Fn::GetAtt" in part or not part.get("Ref", "AWS::").startswith("AWS::"))
    ]
    return target


def test_exact_route_table(one, two) -> None:
    assert set(routes(one)) == (
        HEALTH_ROUTES
        | model_routes("minilm")
        | NOT_FOUND_ROUTES
        | not_allowed_routes("minilm")
        | no_route_routes("minilm")
    )
    assert set(routes(two)) == (
        HEALTH_ROUTES
        | model_routes("minilm")
        | model_routes("bge")
        | NOT_FOUND_ROUTES
        | not_allowed_routes("minilm", "bge")
        | no_route_routes("minilm", "bge")
    )


def mock_answer(method: dict[str, Any]) -> tuple[int, str, dict[str, str]]:
    """What a mock method answers: status, body template, headers (name -> value)."""
    integration = method["Integration"]
    assert integration["Type"] == "MOCK"
    assert integration["PassthroughBehavior"] == "WHEN_NO_MATCH"  # any content type
    status = json.loads(integration["RequestTemplates"]["application/json"])["statusCode"]
    (response,) = integration["IntegrationResponses"]
    assert response["StatusCode"] == str(status)
    assert "SelectionPattern" not in response  # the default response: always this status
    prefix = "method.response.header."
    headers = {
        k.removeprefix(prefix): v.strip("'")
        for k, v in response.get("ResponseParameters", {}).items()
    }
    (declared,) = method["MethodResponses"]
    assert declared["StatusCode"] == str(status)
    assert declared["ResponseModels"] == {"application/json": "Error"}
    assert declared.get("ResponseParameters", {}) == {prefix + k: True for k in headers}
    return status, response["ResponseTemplates"]["application/json"], headers


def test_other_methods_on_a_route_are_a_json_405_with_allow(two) -> None:
    """As the local gateway answers (tests/local/test_gateway.py), after the API key."""
    table = routes(two)
    for _, path in not_allowed_routes("minilm", "bge"):
        allowed = sorted(verb for verb, p in table if p == path and verb != "ANY")
        status, template, headers = mock_answer(table[("ANY", path)])
        assert (status, headers) == (405, {"Allow": ", ".join(allowed)}), path
        assert template == (
            '{"error": "method $context.httpMethod is not allowed on $context.resourcePath"}'
        )
        if "{version}" in path:
            assert table[("ANY", path)]["RequestParameters"] == {
                "method.request.path.version": True
            }
    assert mock_answer(table[("ANY", "/v2/models/bge/infer")])[2] == {"Allow": "POST"}
    assert mock_answer(table[("ANY", "/v2/health/live")])[2] == {"Allow": "GET"}


def test_every_other_path_is_a_json_404_after_the_key(two) -> None:
    """No path falls through to API Gateway's Missing Authentication Token, which answers
    before the key is checked: every path has a method, and every method wants the key."""
    table = routes(two)
    for _, path in no_route_routes("minilm", "bge"):
        status, template, headers = mock_answer(table[("ANY", path)])
        assert (status, headers) == (404, {}), path
        if path == "/{proxy+}":
            assert "$input.params('proxy')" in template
            assert template.endswith('{"error": "no route for $context.httpMethod /$path"}')
        else:
            assert template == (
                '{"error": "no route for $context.httpMethod $context.resourcePath"}'
            )
    paths = {p for _, p in table}
    assert paths == set(resource_paths(two).values()) | {"/"}  # no resource without a method


def test_routes_reach_their_model_function(two) -> None:
    table = routes(two)
    for fn in two.stack.functions:
        for route in model_routes(fn.model.name):
            # The alias, never the unqualified function: CodeDeploy shifts the alias.
            assert lambda_target(table[route]) == two.logical_id(fn.alias), route
    first = two.logical_id(two.stack.functions[0].alias)
    for route in HEALTH_ROUTES:
        assert lambda_target(table[route]) == first


def test_every_method_requires_the_api_key(one, two) -> None:
    for synth in (one, two):
        for route, method in routes(synth).items():
            assert method["ApiKeyRequired"] is True, route


def test_every_method_is_validated(one) -> None:
    validator = {"Ref": one.logical_id(one.stack.api.validator)}
    for route, method in routes(one).items():
        assert method["RequestValidatorId"] == validator, route
    one.template.has_resource_properties(
        "AWS::ApiGateway::RequestValidator",
        {"ValidateRequestBody": True, "ValidateRequestParameters": True},
    )


def test_bodies_reach_the_function_as_bytes_and_path_params_are_required(one) -> None:
    """No JSON body model: a binary-extension body (no Content-Type, taken for JSON) would be
    refused; the function validates every body. Every body type is binary, so the function
    gets the client's bytes (base64) and the mock 404 converts to text both ways."""
    assert one.of_type("AWS::ApiGateway::Model") == {}
    one.template.has_resource_properties(
        "AWS::ApiGateway::RestApi", {"BinaryMediaTypes": ["*/*"], "MinimumCompressionSize": 1024}
    )
    table = routes(one)
    for verb, path in model_routes("minilm"):
        method = table[(verb, path)]
        assert "RequestModels" not in method
        if "{version}" in path:
            assert method["RequestParameters"] == {"method.request.path.version": True}
    for route in NOT_FOUND_ROUTES:
        integration = table[route]["Integration"]
        assert integration["ContentHandling"] == "CONVERT_TO_TEXT"
        assert integration["IntegrationResponses"][0]["ContentHandling"] == "CONVERT_TO_TEXT"


def test_unknown_model_names_get_a_json_404(one) -> None:
    table = routes(one)
    for route in NOT_FOUND_ROUTES:
        method = table[route]
        status, template, headers = mock_answer(method)
        assert (status, headers) == (404, {})
        assert "$input.params('name')" in template
        assert template.endswith('{"error": "model \'$name\' not found"}')
        assert method["RequestParameters"]["method.request.path.name"] is True


EXPECTED_GATEWAY_RESPONSES = {
    "INVALID_API_KEY": "403",
    "ACCESS_DENIED": "403",
    "MISSING_AUTHENTICATION_TOKEN": "404",
    "THROTTLED": "429",
    "QUOTA_EXCEEDED": "429",
    "REQUEST_TOO_LARGE": "413",
    "BAD_REQUEST_BODY": "400",
    "BAD_REQUEST_PARAMETERS": "400",
    "UNSUPPORTED_MEDIA_TYPE": "415",
    "INTEGRATION_TIMEOUT": "504",
    "WAF_FILTERED": "403",
    "DEFAULT_4XX": None,
    "DEFAULT_5XX": None,
}


def test_gateway_responses_are_json_errors(one) -> None:
    responses = {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in one.of_type("AWS::ApiGateway::GatewayResponse").values()
    }
    assert {k: v.get("StatusCode") for k, v in responses.items()} == EXPECTED_GATEWAY_RESPONSES
    for response_type, props in responses.items():
        template = props["ResponseTemplates"]["application/json"]
        if "$context" in template:
            assert template == '{"error": $context.error.messageString}', response_type
        else:
            body = json.loads(template)
            assert list(body) == ["error"] and body["error"], response_type


def test_stage_logging_tracing_metrics(one, two) -> None:
    for synth, stage_name, (rate, burst) in ((one, "v1", (50, 100)), (two, "prod", (20, 40))):
        (stage,) = synth.of_type("AWS::ApiGateway::Stage").values()
        props = stage["Properties"]
        assert props["StageName"] == stage_name
        assert props["TracingEnabled"] is True
        assert props["MethodSettings"] == [
            {
                "HttpMethod": "*",
                "ResourcePath": "/*",
                "LoggingLevel": "ERROR",
                "MetricsEnabled": True,
                "DataTraceEnabled": False,
                # The stage default the usage plan's per-key throttle sits under.
                "ThrottlingRateLimit": rate,
                "ThrottlingBurstLimit": burst,
            }
        ]
        access_log_group = synth.logical_id(synth.stack.api.access_log_group)
        assert {"Ref": access_log_group} in props["AccessLogSetting"]["DestinationArn"]["Fn::Join"][
            1
        ]
        fields = json.loads(props["AccessLogSetting"]["Format"])
        assert fields["requestId"] == "$context.requestId"
        assert {"status", "ip", "apiKeyId", "integrationLatency", "errorMessage"} <= set(fields)


def test_usage_plan_binds_key_stage_throttle_quota(one, two) -> None:
    for synth, throttle, quota in (
        (one, {"RateLimit": 50, "BurstLimit": 100}, None),
        (two, {"RateLimit": 20, "BurstLimit": 40}, {"Limit": 10_000, "Period": "DAY"}),
    ):
        (plan_id, plan), *_ = synth.of_type("AWS::ApiGateway::UsagePlan").items()
        props = plan["Properties"]
        assert props["Throttle"] == throttle
        assert props.get("Quota") == quota
        stage_id = synth.logical_id(synth.stack.api.stage)
        assert props["ApiStages"] == [
            {
                "ApiId": {"Ref": synth.logical_id(synth.stack.api.api)},
                "Stage": {"Ref": stage_id},
                "Throttle": {},
            }
        ]
        key_id = synth.logical_id(synth.stack.api.api_key)
        synth.template.has_resource_properties(
            "AWS::ApiGateway::UsagePlanKey",
            {"KeyId": {"Ref": key_id}, "KeyType": "API_KEY", "UsagePlanId": {"Ref": plan_id}},
        )


def test_api_is_regional_and_keyed_by_header(one) -> None:
    one.template.has_resource_properties(
        "AWS::ApiGateway::RestApi",
        {"ApiKeySourceType": "HEADER", "EndpointConfiguration": {"Types": ["REGIONAL"]}},
    )


def test_outputs_never_expose_the_key_value(one) -> None:
    outputs = one.template.to_json()["Outputs"]
    # test_infra_rollout checks the rollout outputs (functions, aliases, groups, dashboard).
    assert {"ApiUrl", "ApiKeyId", "RegistryBucketName"} <= set(outputs)
    key_id = one.logical_id(one.stack.api.api_key)
    assert [name for name, output in outputs.items() if key_id in json.dumps(output)] == [
        "ApiKeyId"
    ]
    assert outputs["ApiKeyId"]["Value"] == {"Ref": one.logical_id(one.stack.api.api_key)}
    assert outputs["RegistryBucketName"]["Value"] == {
        "Ref": one.logical_id(one.stack.registry.bucket)
    }
    assert "Fn::GetAtt" not in json.dumps(outputs["ApiKeyId"])  # ApiKey has no value attribute


def test_account_logging_role(one, two) -> None:
    role_id = one.logical_id(one.stack.api.cloudwatch_role)
    one.template.has_resource_properties(
        "AWS::ApiGateway::Account", {"CloudWatchRoleArn": {"Fn::GetAtt": [role_id, "Arn"]}}
    )
    role = one.resources[role_id]
    assert role["DeletionPolicy"] == "Retain"
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "apigateway.amazonaws.com"
    }
    (stage_id,) = one.of_type("AWS::ApiGateway::Stage")
    account_id = next(iter(one.of_type("AWS::ApiGateway::Account")))
    assert account_id in one.resources[stage_id]["DependsOn"]
    assert not two.of_type("AWS::ApiGateway::Account")


def test_waf_web_acl(one, two) -> None:
    (acl_id, acl), *_ = one.of_type("AWS::WAFv2::WebACL").items()
    props = acl["Properties"]
    assert props["Scope"] == "REGIONAL" and props["DefaultAction"] == {"Allow": {}}
    rules = {rule["Name"]: rule for rule in props["Rules"]}
    rate = rules["RateLimitPerIp"]["Statement"]["RateBasedStatement"]
    assert rate == {"AggregateKeyType": "IP", "Limit": 15_000, "EvaluationWindowSec": 300}
    assert rules["RateLimitPerIp"]["Action"]["Block"]["CustomResponse"]["ResponseCode"] == 429
    common = rules["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    assert (common["VendorName"], common["Name"]) == ("AWS", "AWSManagedRulesCommonRuleSet")
    overrides = {o["Name"]: o["ActionToUse"] for o in common["RuleActionOverrides"]}
    assert overrides["SizeRestrictions_BODY"] == {"Count": {}}
    assert all(action == {"Count": {}} for action in overrides.values())
    assert all(name.endswith("_BODY") for name in overrides)
    # Log4j / known bad inputs (checkov CKV_AWS_192): header, URI and query rules block; the
    # body rules count only (tensor bytes and texts to embed may look like an exploit).
    bad = rules["AWSManagedRulesKnownBadInputsRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    assert bad["Name"] == "AWSManagedRulesKnownBadInputsRuleSet"
    bad_overrides = {o["Name"]: o["ActionToUse"] for o in bad.get("RuleActionOverrides", [])}
    assert set(bad_overrides) == {"JavaDeserializationRCE_BODY", "Log4JRCE_BODY"}
    assert all(action == {"Count": {}} for action in bad_overrides.values())
    one.template.has_resource_properties(
        "AWS::WAFv2::WebACLAssociation",
        {
            "WebACLArn": {"Fn::GetAtt": [acl_id, "Arn"]},
            "ResourceArn": {
                "Fn::Join": Match.array_with(
                    [Match.array_with([{"Ref": one.logical_id(one.stack.api.stage)}])]
                )
            },
        },
    )
    assert not two.of_type("AWS::WAFv2::WebACL")


@pytest.mark.parametrize("config_name", ["one", "two"])
def test_lambda_permissions_are_scoped_to_this_api(config_name, request) -> None:
    synth = request.getfixturevalue(config_name)
    api_id = synth.logical_id(synth.stack.api.api)
    permissions = synth.of_type("AWS::Lambda::Permission").values()
    assert permissions
    for permission in permissions:
        props = permission["Properties"]
        assert props["Principal"] == "apigateway.amazonaws.com"
        assert {"Ref": api_id} in props["SourceArn"]["Fn::Join"][1]
        assert "test-invoke-stage" not in json.dumps(props["SourceArn"])
