"""The public face: a REST API speaking the Open Inference Protocol V2, keyed and throttled."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence

from aws_cdk import ArnFormat, RemovalPolicy, Size, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct
from onnxlift_serving.contract import MODELS_PREFIX, ROUTES, Route

from infra import nag
from infra.config import LOG_RETENTION_DAYS, DeploymentConfig
from infra.inference_function import InferenceFunction

JSON = "application/json"
# Request bodies are not validated against a JSON model here: a binary-extension body (JSON
# header + raw tensors) comes without a Content-Type, which API Gateway takes for JSON, and
# would be refused. The function checks every body (400/413/415/422); the schema is in the
# OpenAPI document (onnxlift_serving.openapi).
BINARY_MEDIA_TYPES = ["*/*"]

REASON_API_KEY_AUTH = (
    "onnxlift is a machine-to-machine inference API: every method requires an API key "
    "bound to a usage plan (per-key throttle and quota) and the stage sits behind WAF. "
    "There are no end users to authenticate, so no IAM/Cognito/Lambda authorizer; put one "
    "in front if per-user identity is ever needed."
)
REASON_COGNITO = (
    "No Cognito user pool by design: callers are services holding an API key (usage plan), "
    "not end users; see the APIG4 acknowledgement on the same method."
)
REASON_APIGW_ACCOUNT_ROLE = (
    "API Gateway's CloudWatch role is one per account and region, shared by every REST API "
    "there; it writes execution logs to service-named groups API-Gateway-Execution-Logs_"
    "<api-id>/<stage> and access logs to each API's own group, so it needs this account and "
    "region's log groups. Same actions as the AWS managed AmazonAPIGatewayPushToCloudWatchLogs "
    "minus its read actions, limited to this account and region."
)
REASON_NO_WAF = (
    "WAF switched off in the deployment config (onnxlift.waf_enabled=false); the API still "
    "requires an API key and a usage plan throttle on every method."
)
REASON_NO_CACHE = (
    "No stage cache: inference is POST with its input in the body (API Gateway caches GET "
    "methods by default and keys on parameters, not bodies), and health/ready must answer "
    "live. A cache cluster is billed by the hour for responses it would rarely serve."
)

# One line of JSON per request in the access log group.
ACCESS_LOG_FIELDS = {
    "requestId": "$context.requestId",
    "extendedRequestId": "$context.extendedRequestId",
    "requestTime": "$context.requestTime",
    "ip": "$context.identity.sourceIp",
    "userAgent": "$context.identity.userAgent",
    "apiKeyId": "$context.identity.apiKeyId",
    "httpMethod": "$context.httpMethod",
    "resourcePath": "$context.resourcePath",
    "path": "$context.path",
    "protocol": "$context.protocol",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationStatus": "$context.integration.status",
    "integrationLatency": "$context.integration.latency",
    "errorType": "$context.error.responseType",
    "errorMessage": "$context.error.message",
    "wafStatus": "$context.waf.status",
    "xrayTraceId": "$context.xrayTraceId",
}


def _error(message: str) -> dict[str, str]:
    return {JSON: json.dumps({"error": message})}


# Gateway responses: errors API Gateway answers itself, as {"error": "..."} like the handler.
# Templates here are not VTL; only $context variables are substituted. messageString is
# already a quoted JSON string.
GATEWAY_RESPONSES: dict[str, tuple[apigw.ResponseType, str | None, dict[str, str]]] = {
    "InvalidApiKey": (
        apigw.ResponseType.INVALID_API_KEY,
        "403",
        _error("missing or invalid API key: send it in the x-api-key header"),
    ),
    "AccessDenied": (
        apigw.ResponseType.ACCESS_DENIED,
        "403",
        _error("missing or invalid API key: send it in the x-api-key header"),
    ),
    "NotFound": (
        apigw.ResponseType.MISSING_AUTHENTICATION_TOKEN,
        "404",
        _error("not found: see /v2/models/<name> and /v2/health/ready"),
    ),
    "Throttled": (
        apigw.ResponseType.THROTTLED,
        "429",
        _error("too many requests: the API key's rate limit was exceeded, retry later"),
    ),
    "QuotaExceeded": (
        apigw.ResponseType.QUOTA_EXCEEDED,
        "429",
        _error("the API key's daily quota is used up"),
    ),
    "RequestTooLarge": (
        apigw.ResponseType.REQUEST_TOO_LARGE,
        "413",
        _error("request body too large (API Gateway accepts at most 10 MB)"),
    ),
    "BadRequestBody": (
        apigw.ResponseType.BAD_REQUEST_BODY,
        "400",
        _error(
            "request body is not a V2 inference request: expected "
            '{"inputs": [{"name", "shape", "datatype", "data"}, ...]}'
        ),
    ),
    "BadRequestParameters": (
        apigw.ResponseType.BAD_REQUEST_PARAMETERS,
        "400",
        _error("missing or invalid request parameters"),
    ),
    "UnsupportedMediaType": (
        apigw.ResponseType.UNSUPPORTED_MEDIA_TYPE,
        "415",
        _error("unsupported media type: send application/json"),
    ),
    "IntegrationTimeout": (
        apigw.ResponseType.INTEGRATION_TIMEOUT,
        "504",
        _error("the model did not answer within the API Gateway timeout (29 s)"),
    ),
    "WafFiltered": (
        apigw.ResponseType.WAF_FILTERED,
        "403",
        _error("request blocked by the web application firewall"),
    ),
    "Default4xx": (
        apigw.ResponseType.DEFAULT_4_XX,
        None,
        {JSON: '{"error": $context.error.messageString}'},
    ),
    "Default5xx": (
        apigw.ResponseType.DEFAULT_5_XX,
        None,
        {JSON: '{"error": $context.error.messageString}'},
    ),
}

# WAF: AWS common rule set, but the rules that inspect the *body* only count. Inference
# bodies are data, not web forms: MBs of tensors (SizeRestrictions_BODY blocks > 8 KB) and
# free text to embed, which may legitimately contain markup, paths or URLs (XSS/LFI/RFI/SSRF
# body rules). The body is never rendered or dereferenced; the handler validates it.
WAF_COUNT_ONLY_RULES = (
    "SizeRestrictions_BODY",
    "CrossSiteScripting_BODY",
    "GenericLFI_BODY",
    "GenericRFI_BODY",
    "EC2MetaDataSSRF_BODY",
)
# The known-bad-inputs set (Log4j JNDI lookups, Java deserialization, exploitable paths) blocks
# on headers, URI path and query string; its body rules count only, for the same reason: raw
# tensor bytes can hold a Java serialization header, and text to embed may quote an exploit.
# The functions are Python (no Log4j, no Java deserializer) and never log bodies.
WAF_KNOWN_BAD_INPUTS_COUNT_ONLY_RULES = ("JavaDeserializationRCE_BODY", "Log4JRCE_BODY")
WAF_RATE_WINDOW_S = 300


def _waf_visibility(metric: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
    return wafv2.CfnWebACL.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True,
        metric_name=metric,
        sampled_requests_enabled=True,
    )


def _waf_rate_limit_rule(limit: int, *, priority: int, metric: str) -> wafv2.CfnWebACL.RuleProperty:
    """Block an address above `limit` requests per window with a JSON 429."""
    return wafv2.CfnWebACL.RuleProperty(
        name="RateLimitPerIp",
        priority=priority,
        action=wafv2.CfnWebACL.RuleActionProperty(
            block=wafv2.CfnWebACL.BlockActionProperty(
                custom_response=wafv2.CfnWebACL.CustomResponseProperty(
                    response_code=429, custom_response_body_key="rate-limited"
                )
            )
        ),
        statement=wafv2.CfnWebACL.StatementProperty(
            rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                aggregate_key_type="IP",
                limit=limit,
                evaluation_window_sec=WAF_RATE_WINDOW_S,
            )
        ),
        visibility_config=_waf_visibility(metric),
    )


def _waf_managed_rules(
    name: str, count_only: Sequence[str], *, priority: int, metric: str
) -> wafv2.CfnWebACL.RuleProperty:
    """An AWS managed rule group that blocks, except its `count_only` rules (body rules)."""
    return wafv2.CfnWebACL.RuleProperty(
        name=name,
        priority=priority,
        override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
        statement=wafv2.CfnWebACL.StatementProperty(
            managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                vendor_name="AWS",
                name=name,
                rule_action_overrides=[
                    wafv2.CfnWebACL.RuleActionOverrideProperty(
                        name=rule,
                        action_to_use=wafv2.CfnWebACL.RuleActionProperty(count={}),
                    )
                    for rule in count_only
                ],
            )
        ),
        visibility_config=_waf_visibility(metric),
    )


class InferenceApi(Construct):
    """REST API: /v2/health/*, /v2/models/<name>/... per model, JSON 404 for other names."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        functions: Sequence[InferenceFunction],
    ) -> None:
        super().__init__(scope, id)
        if not functions:
            raise ValueError("the API needs at least one model function")

        # The steps run in this order: each reads what the ones before it set on self.
        self.access_log_group = self._access_log_group(config)
        self.api = self._rest_api(config)
        self.stage = self.api.deployment_stage
        self.validator = self._validator()

        self.methods: list[apigw.Method] = []
        self._routes(functions)
        self._gateway_responses()

        self.api_key = self.api.add_api_key(
            "ApiKey", description="onnxlift inference API key (value: aws apigateway get-api-key)"
        )
        self.usage_plan = self._usage_plan(config)

        self.cloudwatch_role: iam.Role | None = None
        self.web_acl: wafv2.CfnWebACL | None = None
        if config.manage_apigateway_account:
            self._account_logging_role()
        if config.waf_enabled:
            self._web_acl(config)

    def acknowledge_findings(self, *, skip: Collection[str] = ()) -> None:
        """cdk-nag acknowledgements for the API, each with its reason."""
        # APIG4/COG4 only where the compensating control is really there: a method that
        # does not require an API key stays a finding.
        for method in self.methods:
            cfn_method = method.node.default_child
            assert isinstance(cfn_method, apigw.CfnMethod)
            if cfn_method.api_key_required is True:
                nag.ack(method, f"{nag.PACK}-APIG4", REASON_API_KEY_AUTH, skip=skip)
                nag.ack(method, f"{nag.PACK}-COG4", REASON_COGNITO, skip=skip)

        if self.cloudwatch_role is not None:
            log_groups = nag.resource_finding(self, self.log_groups_arn)
            nag.ack(
                self.cloudwatch_role,
                f"{nag.PACK}-IAM5[{log_groups}]",
                REASON_APIGW_ACCOUNT_ROLE,
                skip=skip,
            )

        if self.web_acl is None:
            nag.ack(self.stage, f"{nag.PACK}-APIG3", REASON_NO_WAF, skip=skip)
        nag.checkov_skip(self.stage, "CKV_AWS_120", REASON_NO_CACHE)
        nag.checkov_skip(self.access_log_group, "CKV_AWS_158", nag.REASON_LOGS_KMS)

    # -- the API, its stage and what every request is checked against ----------------------

    def _access_log_group(self, config: DeploymentConfig) -> logs.LogGroup:
        return logs.LogGroup(
            self,
            "AccessLogs",
            retention=logs.RetentionDays[LOG_RETENTION_DAYS[config.log_retention_days]],
            removal_policy=RemovalPolicy.DESTROY,
        )

    def _rest_api(self, config: DeploymentConfig) -> apigw.RestApi:
        api = apigw.RestApi(
            self,
            "RestApi",
            rest_api_name=config.name("api"),
            description="onnxlift: ONNX model inference (Open Inference Protocol V2)",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            # Set in _account_logging_role, region-wide, with our own least-privilege role
            # (or not at all).
            cloud_watch_role=False,
            api_key_source_type=apigw.ApiKeySourceType.HEADER,
            min_compression_size=Size.kibibytes(1),
            # Request bodies reach the function as the client's bytes (base64 in the event):
            # the binary tensor extension's raw tensors must not be read as UTF-8 text, and
            # tritonclient sends them with no Content-Type at all, so no narrower list matches.
            binary_media_types=BINARY_MEDIA_TYPES,
            default_method_options=apigw.MethodOptions(api_key_required=True),
            deploy_options=apigw.StageOptions(
                stage_name=config.stage_name,
                access_log_destination=apigw.LogGroupLogDestination(self.access_log_group),
                access_log_format=apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS)),
                tracing_enabled=True,
                metrics_enabled=True,
                # The stage-wide default for every method, beside the per-key usage plan: with
                # the one API key the two agree, and the stage keeps its ceiling even for a key
                # added later without a plan (cdk-nag Serverless, cfn-lint ES2003).
                throttling_rate_limit=config.throttle_rate_limit,
                throttling_burst_limit=config.throttle_burst_limit,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                # Never log request/response bodies: they carry callers' data.
                data_trace_enabled=False,
            ),
        )
        # The RestApi's own "Endpoint" output duplicates the stack's ApiUrl output.
        api.node.try_remove_child("Endpoint")
        return api

    def _validator(self) -> apigw.RequestValidator:
        return self.api.add_request_validator(
            "Validator",
            request_validator_name="body-and-parameters",
            validate_request_body=True,
            validate_request_parameters=True,
        )

    def _gateway_responses(self) -> None:
        for gateway_id, (response_type, status, templates) in GATEWAY_RESPONSES.items():
            self.api.add_gateway_response(
                gateway_id, type=response_type, status_code=status, templates=templates
            )

    def _usage_plan(self, config: DeploymentConfig) -> apigw.UsagePlan:
        """Per-key throttle and quota on the stage, bound to the API key."""
        usage_plan = self.api.add_usage_plan(
            "UsagePlan",
            description="onnxlift: per-key throttle and quota",
            throttle=apigw.ThrottleSettings(
                rate_limit=config.throttle_rate_limit, burst_limit=config.throttle_burst_limit
            ),
            quota=(
                apigw.QuotaSettings(limit=config.quota_per_day, period=apigw.Period.DAY)
                if config.quota_per_day is not None
                else None
            ),
            api_stages=[apigw.UsagePlanPerApiStage(api=self.api, stage=self.stage)],
        )
        usage_plan.add_api_key(self.api_key)
        return usage_plan

    # -- routes ------------------------------------------------------------------------

    def _method(
        self,
        resource: apigw.IResource,
        http_method: str,
        integration: apigw.Integration,
        *,
        path_params: Sequence[str] = (),
        method_responses: Sequence[apigw.MethodResponse] | None = None,
    ) -> apigw.Method:
        method = resource.add_method(
            http_method,
            integration,
            api_key_required=True,
            request_validator=self.validator,
            request_parameters={f"method.request.path.{p}": True for p in path_params} or None,
            method_responses=method_responses,
        )
        self.methods.append(method)
        return method

    def _routes(self, functions: Sequence[InferenceFunction]) -> None:
        """The contract's V2 route table: health on the first function, each model's routes
        under its literal name on its own function; on every route's resource a JSON 405
        (with Allow) for the other methods, a JSON 404 for any other model name or path.

        Every method, the 405s and 404s included, requires the API key, so a request
        without it is a 403 whatever its path and method, and only then is the route told.
        """
        # api_target: a model function's alias (its invoke permission is on the alias too).
        health_backend = apigw.LambdaIntegration(functions[0].api_target, allow_test_invoke=False)
        table: dict[str, list[tuple[Route, apigw.Integration]]] = {}
        for route in ROUTES:
            if "{name}" not in route.template:
                table.setdefault(route.template, []).append((route, health_backend))
        for fn in functions:
            backend = apigw.LambdaIntegration(fn.api_target, allow_test_invoke=False)
            for route in ROUTES:
                if "{name}" in route.template:
                    path = route.template.replace("{name}", fn.model.name)
                    table.setdefault(path, []).append((route, backend))

        for path, entries in table.items():
            resource = self.api.root.resource_for_path(path)
            path_params = ["version"] if "{version}" in path else []
            for route, backend in entries:
                self._method(
                    resource,
                    route.method,
                    backend,
                    path_params=path_params,
                )
            self._method_not_allowed(resource, sorted({r.method for r, _ in entries}), path_params)
        self._unknown_model_routes()
        self._unknown_paths()

    def _mock(
        self,
        resource: apigw.IResource,
        status: int,
        template: str,
        *,
        path_params: Sequence[str] = (),
        headers: dict[str, str] | None = None,
    ) -> apigw.Method:
        """ANY on `resource`, answered by API Gateway itself: `status`, the JSON `template`
        (VTL) and `headers` (name -> value), after the API key check like every method."""
        integration = apigw.MockIntegration(
            # Any content type, not only JSON, gets the answer (NEVER would make it a 415).
            passthrough_behavior=apigw.PassthroughBehavior.WHEN_NO_MATCH,
            # Every body is binary to this API (BINARY_MEDIA_TYPES): the templates need text.
            content_handling=apigw.ContentHandling.CONVERT_TO_TEXT,
            request_templates={JSON: json.dumps({"statusCode": status})},
            integration_responses=[
                apigw.IntegrationResponse(
                    status_code=str(status),
                    content_handling=apigw.ContentHandling.CONVERT_TO_TEXT,
                    response_templates={JSON: template},
                    response_parameters={
                        f"method.response.header.{k}": f"'{v}'" for k, v in (headers or {}).items()
                    }
                    or None,
                )
            ],
        )
        response = apigw.MethodResponse(
            status_code=str(status),
            response_models={JSON: apigw.Model.ERROR_MODEL},
            response_parameters={f"method.response.header.{k}": True for k in headers or {}}
            or None,
        )
        return self._method(
            resource, "ANY", integration, path_params=path_params, method_responses=[response]
        )

    def _method_not_allowed(
        self, resource: apigw.IResource, allowed: Sequence[str], path_params: Sequence[str]
    ) -> None:
        """The route's other methods: a JSON 405 with Allow, as the local gateway answers."""
        self._mock(
            resource,
            405,
            '{"error": "method $context.httpMethod is not allowed on $context.resourcePath"}',
            path_params=path_params,
            headers={"Allow": ", ".join(allowed)},
        )

    def _unknown_model_routes(self) -> None:
        """Any other model name gets a JSON 404 from a mock integration.

        Literal resources win over {name}, so this only answers for models that are not
        deployed.
        """
        models = self.api.root.resource_for_path(MODELS_PREFIX.rstrip("/"))
        unknown = models.add_resource("{name}")
        template = (
            "#set($name = $util.escapeJavaScript($input.params('name'))"
            '.replaceAll("\\\\\'", "\'"))\n'
            '{"error": "model \'$name\' not found"}'
        )
        self._mock(unknown, 404, template, path_params=["name"])
        self._mock(unknown.add_resource("{proxy+}"), 404, template, path_params=["name", "proxy"])

    def _unknown_paths(self) -> None:
        """A JSON 404 on the root, under a catch-all {proxy+}, and on every resource that
        only leads to routes (/v2, /v2/models/<name>/versions, ...): no path answers
        API Gateway's own Missing Authentication Token, which does not ask for the key."""
        self._mock(
            self.api.root.add_resource("{proxy+}"),
            404,
            "#set($path = $util.escapeJavaScript($input.params('proxy'))"
            '.replaceAll("\\\\\'", "\'"))\n'
            '{"error": "no route for $context.httpMethod /$path"}',
            path_params=["proxy"],
        )
        for resource in self.api.root.node.find_all():  # the root and its descendants
            if isinstance(resource, apigw.ResourceBase) and not any(
                isinstance(child, apigw.Method) for child in resource.node.children
            ):
                self._mock(
                    resource,
                    404,
                    '{"error": "no route for $context.httpMethod $context.resourcePath"}',
                    path_params=re.findall(r"\{(\w+)\}", resource.path),
                )

    # -- account-level logging role ------------------------------------------------------

    def _account_logging_role(self) -> None:
        """API Gateway writes stage logs with one role per account and region.

        Same actions as the AWS managed AmazonAPIGatewayPushToCloudWatchLogs policy minus
        the read actions, limited to this account and region's log groups. Retained on
        delete, like the CDK's own `cloudWatchRole`: other APIs in the region rely on it.
        """
        # Every log group (and its streams) of this account and region.
        self.log_groups_arn = Stack.of(self).format_arn(
            service="logs",
            resource="log-group",
            resource_name="*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.cloudwatch_role = iam.Role(
            self,
            "CloudWatchRole",
            assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
            description="API Gateway account role: push execution and access logs to CloudWatch",
            inline_policies={
                "PushLogs": iam.PolicyDocument(
                    statements=[
                        iam.PolicyStatement(
                            actions=[
                                "logs:CreateLogGroup",
                                "logs:CreateLogStream",
                                "logs:DescribeLogGroups",
                                "logs:DescribeLogStreams",
                                "logs:PutLogEvents",
                            ],
                            resources=[self.log_groups_arn],
                        )
                    ]
                )
            },
        )
        self.cloudwatch_role.apply_removal_policy(RemovalPolicy.RETAIN)
        self.account = apigw.CfnAccount(
            self, "Account", cloud_watch_role_arn=self.cloudwatch_role.role_arn
        )
        # The stage enables logging, which fails unless the account role is set first.
        self.stage.node.add_dependency(self.account)

    # -- WAF -------------------------------------------------------------------------------

    def _web_acl(self, config: DeploymentConfig) -> None:
        # A single client may send at most the whole usage plan's sustained rate.
        rate_limit = max(100, int(config.throttle_rate_limit * WAF_RATE_WINDOW_S))
        self.web_acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            name=config.name("api"),
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=_waf_visibility(config.name("api")),
            custom_response_bodies={
                "rate-limited": wafv2.CfnWebACL.CustomResponseBodyProperty(
                    content_type="APPLICATION_JSON",
                    content=json.dumps({"error": "too many requests from this address"}),
                )
            },
            rules=[
                _waf_rate_limit_rule(rate_limit, priority=0, metric=config.name("rate-limit")),
                _waf_managed_rules(
                    "AWSManagedRulesCommonRuleSet",
                    WAF_COUNT_ONLY_RULES,
                    priority=1,
                    metric=config.name("common-rules"),
                ),
                _waf_managed_rules(
                    "AWSManagedRulesKnownBadInputsRuleSet",
                    WAF_KNOWN_BAD_INPUTS_COUNT_ONLY_RULES,
                    priority=2,
                    metric=config.name("known-bad-inputs"),
                ),
            ],
        )
        self.web_acl_association = wafv2.CfnWebACLAssociation(
            self,
            "WebAclAssociation",
            resource_arn=self.stage.stage_arn,
            web_acl_arn=self.web_acl.attr_arn,
        )
