"""Errors a request can end in, each with the HTTP status the client sees."""

from __future__ import annotations

from onnxlift_serving.contract import UNAVAILABLE_RETRY_AFTER_S, retry_after


class InferenceError(Exception):
    """An error that is answered as `{"error": message}` with `status`."""

    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(InferenceError):
    """Malformed JSON or a body that is not a V2 request."""

    status = 400


class NotFound(InferenceError):
    """Unknown model, version or route."""

    status = 404


class MethodNotAllowed(InferenceError):
    """A known path asked with a method it does not answer; `Allow` names the ones it does."""

    status = 405


class PayloadTooLarge(InferenceError):
    """Body over the payload limit, or a batch over the model's maximum."""

    status = 413


class UnsupportedMediaType(InferenceError):
    """A request body in a Content-Encoding the service does not decode."""

    status = 415


class Unprocessable(InferenceError):
    """Well-formed V2 request that does not fit the model: input name, shape, datatype."""

    status = 422


class ServiceUnavailable(InferenceError):
    """The model could not be loaded (yet); the client should retry later."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: int = UNAVAILABLE_RETRY_AFTER_S) -> None:
        super().__init__(message, headers=retry_after(retry_after_s))


class ArtifactError(Exception):
    """A model artifact is missing, corrupt (sha256 mismatch) or unreadable."""


class VersionNotPublished(ArtifactError):
    """The registry holds no manifest for this model version: it was never published."""
