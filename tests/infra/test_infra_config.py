"""DeploymentConfig / ModelDeployment: validation, context loading, spec mapping."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from infra.config import (
    ConfigError,
    DeploymentConfig,
    ModelDeployment,
    config_from_context,
    models_from_specs,
    read_context,
)

MINILM = ModelDeployment(
    name="minilm", version="1", memory_mb=2048, timeout_s=29, reserved_concurrency=10
)


def model(**overrides):
    values = dict(name="m", version="1", memory_mb=2048, timeout_s=10, reserved_concurrency=1)
    return ModelDeployment(**{**values, **overrides})


@pytest.mark.parametrize(
    ("memory_mb", "threads"),
    [(128, 1), (1768, 1), (1769, 1), (3538, 2), (5307, 3), (8845, 5), (10_240, 5)],
)
def test_ort_threads_follow_lambda_vcpus(memory_mb: int, threads: int) -> None:
    assert model(memory_mb=memory_mb).ort_threads == threads


def test_image_tag() -> None:
    assert model(name="minilm", version="3").image_tag == "minilm-3"
    assert model(name="minilm", version="3", architecture="arm64").image_tag == "minilm-3-arm64"


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "1abc"},
        {"name": "has space"},
        {"name": "a/b"},
        {"version": ""},
        {"version": "1 2"},
        {"memory_mb": 127},
        {"memory_mb": 10_241},
        {"timeout_s": 0},
        {"timeout_s": 901},
        {"reserved_concurrency": 0},
    ],
)
def test_model_rejects(overrides: dict) -> None:
    with pytest.raises(ConfigError):
        model(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"models": ()},
        {"models": (MINILM, MINILM)},
        {"stage_name": "v-1"},
        {"registry_bucket_name": "Not_A_Bucket"},
        {"throttle_rate_limit": 0},
        {"throttle_burst_limit": -1},
        {"quota_per_day": 0},
        {"image_source": "docker"},
        {"image_source": "ecr"},  # needs ecr_repository_name
        {"model_source": "efs"},
        {"log_retention_days": 31},
    ],
)
def test_deployment_rejects(overrides: dict) -> None:
    with pytest.raises(ConfigError):
        DeploymentConfig(**{"models": (MINILM,), **overrides})


def test_defaults() -> None:
    config = DeploymentConfig(models=(MINILM,))
    assert (config.stage_name, config.image_source, config.model_source) == ("v1", "asset", "image")
    assert (config.throttle_rate_limit, config.throttle_burst_limit) == (50, 100)
    assert config.quota_per_day is None and config.registry_bucket_name is None
    assert config.log_retention_days == 30 and config.waf_enabled


def test_cdk_json_context_is_a_valid_config(cdk_context: dict) -> None:
    """cdk.json's default environment is dev: short retention, no WAF, not the account role."""
    config = config_from_context(cdk_context["onnxlift"], [MINILM])
    assert config == DeploymentConfig(
        models=(MINILM,),
        env="dev",
        log_retention_days=7,
        waf_enabled=False,
        manage_apigateway_account=False,
    )


def test_config_from_context_coerces_cli_strings() -> None:
    config = config_from_context(
        {
            "image_source": "ecr",
            "ecr_repository_name": "onnxlift",
            "throttle_rate_limit": "12.5",
            "throttle_burst_limit": "30",
            "quota_per_day": "1000",
            "waf_enabled": "false",
            "registry_bucket_name": "null",
        },
        [MINILM],
    )
    assert config.image_source == "ecr"
    assert config.throttle_rate_limit == 12.5 and config.throttle_burst_limit == 30
    assert config.quota_per_day == 1000 and config.waf_enabled is False
    assert config.registry_bucket_name is None


def test_config_from_context_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="stage"):
        config_from_context({"stage": "v2"}, [MINILM])


def test_read_context_applies_dotted_overrides() -> None:
    values = {"onnxlift": {"stage_name": "v1", "models": {}}, "onnxlift.stage_name": "beta"}
    node = SimpleNamespace(try_get_context=values.get)
    assert read_context(node) == {
        "stage_name": "beta",
        "models": {},
        "env": "dev",
        "model_defaults": {},
    }


def spec(name: str, target: str = "lambda") -> SimpleNamespace:
    serving = SimpleNamespace(
        target=target,
        memory_mb=3000,
        timeout_s=15,
        reserved_concurrency=4,
        rollout="canary10-5m",
        p99_budget_ms=None,
        architecture="x86_64",
    )
    return SimpleNamespace(name=name, serving=serving)


def test_models_from_specs_skips_sagemaker_and_reads_versions() -> None:
    models = models_from_specs(
        [spec("minilm"), spec("llm", target="sagemaker"), spec("bge")],
        {"models": {"minilm": {"version": "7"}}},
    )
    assert [(m.name, m.version) for m in models] == [("minilm", "7"), ("bge", "1")]
    assert models[0] == ModelDeployment(
        name="minilm", version="7", memory_mb=3000, timeout_s=15, reserved_concurrency=4
    )
