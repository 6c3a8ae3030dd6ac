"""The few exceptions the service raises; the MCP layer turns each into a tool error."""


class LightMemError(Exception):
    """Base of every error a caller can act on; its message names the field and the fix."""


class ConfigError(LightMemError):
    """The configuration is contradictory or invalid."""


class InvalidInput(LightMemError):
    """A tool argument is wrong; nothing was written."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(LightMemError):
    """A record does not exist in the caller's scope."""


class BackendUnavailable(LightMemError):
    """The store or a model cannot be used right now."""


class SchemaMismatch(BackendUnavailable):
    """The store was written with another schema or embedding dimension than configured."""


class StoreInUse(BackendUnavailable):
    """Another process has the embedded store open."""
