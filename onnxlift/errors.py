"""Errors the toolkit raises for a user's mistake; the CLI prints them without a traceback."""


class OnnxliftError(Exception):
    """Base for every error that carries a message meant for the user."""


class SpecError(OnnxliftError):
    """A model spec is missing, malformed or outside a deploy target's limits."""


class BuildError(OnnxliftError):
    """Export, check, quantization or the parity gate failed."""


class RegistryError(OnnxliftError):
    """The registry refused an operation (exists, missing, corrupt)."""


class VersionExistsError(RegistryError):
    """A published version is immutable: it can never be written again."""
