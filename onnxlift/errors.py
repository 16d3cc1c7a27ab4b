"""Errors the toolkit raises for a user's mistake; the CLI prints them without a traceback."""


class OnnxliftError(Exception):
    """Base for every error that carries a message meant for the user.

    `exit_code` is the CLI's: 2 for a refusal of the user's input or request, 3 for work a
    limit stopped (README, "Exit codes")."""

    exit_code = 2


class SpecError(OnnxliftError):
    """A model spec is missing, malformed or outside a deploy target's limits."""


class BuildError(OnnxliftError):
    """Export, check, quantization or the parity gate failed."""


class ModelRejected(BuildError):
    """onnx, onnxruntime or a model's source.py raised while building: the model, not onnxlift."""


class RegistryError(OnnxliftError):
    """The registry refused an operation (exists, missing, corrupt)."""


class VersionExistsError(RegistryError):
    """A published version is immutable: it can never be written again."""


class LimitExceeded(OnnxliftError):
    """Work was stopped by a limit (time, memory) before it could finish."""

    exit_code = 3
