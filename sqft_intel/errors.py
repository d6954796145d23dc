"""Errors sqft_intel raises on purpose. Messages name the value seen, what is allowed and the fix."""


class SqftError(Exception):
    """Base class for errors sqft_intel raises on purpose."""


class ConfigError(SqftError, ValueError):
    """A configuration or input value is out of range, unknown or inconsistent."""


class UnsupportedModelError(SqftError, TypeError):
    """A layer or architecture a stage cannot handle."""


class ArtifactError(SqftError, RuntimeError):
    """A stage directory is missing files, is the wrong stage, or comes from another version."""


class SqftWarning(UserWarning):
    """Something worked, but not the way the user probably expects."""
