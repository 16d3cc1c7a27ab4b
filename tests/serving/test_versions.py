"""Which version answers, and what one broken or odd version may do to the others: nothing.

The service's loader is replaced by a fake that records every call, so these run in
milliseconds and prove what reaches the filesystem or the registry (only canonical versions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from onnxlift_serving import service as service_module
from onnxlift_serving.artifact import Artifact
from onnxlift_serving.errors import ArtifactError, NotFound, ServiceUnavailable
from onnxlift_serving.service import LoadedVersion, ModelService, ServiceConfig

SECRET = "/var/task/model/model.onnx: sha256 9f86d081884c7d659a2feaa0c55ad015 does not match"


class FakeService(ModelService):
    """ModelService with `_load` recorded; `broken` versions fail, `missing` ones are 404."""

    def __init__(self, config: ServiceConfig, broken: set[str], missing: set[str]) -> None:
        self.calls: list[str] = []
        self.broken, self.missing = broken, missing
        super().__init__(config)

    def _load(self, version: str) -> LoadedVersion:
        self.calls.append(version)
        if version in self.missing:
            raise NotFound(f"version '{version}' of model 'm' is not published")
        if version in self.broken:
            raise ArtifactError(SECRET)
        artifact = Artifact(Path("/nowhere"), {"name": "m", "version": version})
        return LoadedVersion(artifact, pipeline=None)  # type: ignore[arg-type]


def make(
    *, broken: set[str] = frozenset(), missing: set[str] = frozenset(), keep: int = 2
) -> FakeService:  # type: ignore[assignment]
    config = ServiceConfig(name="m", version="1", source="registry", max_loaded_versions=keep)
    return FakeService(config, set(broken), set(missing))


@pytest.mark.parametrize(
    "version", ["a" * 300, "01", "0", "-1", "1.0", "1 ", "../1", "%2e%2e", "99999999999", "1\n"]
)
def test_a_version_that_is_not_canonical_is_a_404_before_any_lookup(version: str) -> None:
    service = make()
    with pytest.raises(NotFound) as caught:
        service.resolve("m", version)
    assert service.calls == ["1"]  # the default, at start; nothing for the odd version
    assert len(caught.value.message) < 200 and "/" not in caught.value.message.replace(
        version[:64], ""
    )


def test_one_broken_version_never_makes_another_answer_503() -> None:
    service = make(broken={"2"})
    with pytest.raises(ServiceUnavailable) as caught:
        service.resolve("m", "2")
    assert caught.value.headers["Retry-After"] == "5"
    assert service.resolve("m").artifact.version == "1"  # the default still answers
    assert service.resolve("m", "1").artifact.version == "1"
    assert service.ready and service.load_error is None
    with pytest.raises(ServiceUnavailable, match="less than 5s ago"):
        service.resolve("m", "2")  # its own timer: no second load within the interval
    assert service.calls == ["1", "2"]


def test_each_version_retries_on_its_own_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    service = make(broken={"2", "3"})
    clock = [100.0]
    monkeypatch.setattr(service_module.time, "monotonic", lambda: clock[0])
    for version in ("2", "3"):
        with pytest.raises(ServiceUnavailable):
            service.resolve("m", version)
    clock[0] += 3
    service.broken.discard("3")
    with pytest.raises(ServiceUnavailable):
        service.resolve("m", "3")  # 3 s: still waiting
    clock[0] += 3
    assert service.resolve("m", "3").artifact.version == "3"  # 6 s: retried, and it loads
    assert service.calls.count("3") == 2 and service.calls.count("2") == 1


def test_a_missing_version_is_404_every_time_and_leaves_no_failure_behind() -> None:
    service = make(missing={"9"})
    for _ in range(3):
        with pytest.raises(NotFound):
            service.resolve("m", "9")
    assert service.calls == ["1", "9", "9", "9"]  # never turned into a 503 by a timer
    assert service.resolve("m").artifact.version == "1" and service.load_error is None


def test_the_default_version_is_never_evicted_by_other_versions() -> None:
    service = make(keep=2)
    for version in ("2", "3", "4", "5", "3"):
        assert service.resolve("m", version).artifact.version == version
    assert "1" in service._loaded and len(service._loaded) == 2
    assert service.calls.count("1") == 1  # loaded once, at start, and kept
    assert list(service._loaded) == ["1", "3"]


def test_answers_name_no_path_and_no_hash_but_the_log_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = make(broken={"2"})
    with pytest.raises(ServiceUnavailable) as caught:
        service.resolve("m", "2")
    message = caught.value.message
    assert "/var/task" not in message and "sha256" not in message and "9f86d08" not in message
    assert SECRET in caplog.text


def test_a_broken_default_is_503_and_its_reason_stays_in_the_logs() -> None:
    service = make(broken={"1"})
    assert not service.ready
    assert SECRET in (service.load_error or "")
    assert "sha256" not in (service.load_problem or "") and "failed to load" in (
        service.load_problem or ""
    )
    with pytest.raises(ServiceUnavailable) as caught:
        service.resolve("m")
    assert "/var/task" not in caught.value.message


def test_an_unset_alias_says_so_without_a_path(tmp_path: Path) -> None:
    config = ServiceConfig(name="m", source="image", model_dir=tmp_path / "nothing")
    service = ModelService(config)
    assert not service.ready
    assert str(tmp_path) not in (service.load_problem or "")
    assert "no manifest" in (service.load_problem or "")


def test_readiness_is_per_version() -> None:
    service: Any = make(broken={"2"}, missing={"4"})
    assert service.model_ready("m") and service.model_ready("m", "1")
    assert service.model_ready("m", "3") and "3" in service._loaded  # loaded on first ask
    assert not service.model_ready("m", "2")  # broken: not ready, the others unaffected
    assert service.model_ready("m", "1") and service.model_ready("m", "3")
    with pytest.raises(NotFound):
        service.model_ready("m", "4")  # not published
    with pytest.raises(NotFound):
        service.model_ready("m", "x")  # not a version at all


def test_through_the_handler_other_versions_never_evict_the_default(
    load_handler: Any, registry: Any, minilm_build: Any, published: str, lambda_context: Any
) -> None:
    from tests.conftest import call, texts_body

    others = [registry.publish(minilm_build.folder, name="minilm") for _ in range(2)]
    module = load_handler(MAX_LOADED_VERSIONS="2")
    for version in [*others, "a" * 300, "01", *others]:
        path = f"/v2/models/minilm/versions/{version}/infer"
        status, body, _ = call(module, lambda_context, texts_body(["x"]), path=path)
        assert status == (200 if version in others else 404), body
        assert "/" not in body.get("error", "")
        assert published in module.service._loaded
    status, body, _ = call(module, lambda_context, texts_body(["x"]))
    assert status == 200 and body["model_version"] == published
