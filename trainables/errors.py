"""The package's exception hierarchy: one base, a few specific kinds."""

from __future__ import annotations


class CreditError(Exception):
    """Base class of every error credit-search raises on purpose."""


class ConfigError(CreditError, ValueError):
    """A configuration value is invalid; the message names the value and what is valid."""


class DataUnavailableError(CreditError):
    """A dataset cannot be found locally and cannot be downloaded."""


class DivergenceError(CreditError):
    """Training produced NaN or inf; the run stops instead of continuing silently."""

    def __init__(self, epoch: int, what: str):
        self.epoch = epoch
        self.what = what
        super().__init__(f"training diverged in epoch {epoch}: {what} is not finite")

    def __reduce__(self):  # picklable across processes (Ray sends it to the driver)
        return type(self), (self.epoch, self.what)


class DeviceUnavailableError(CreditError):
    """The node a trial was placed on lacks the device it was given (e.g. Ray granted a
    GPU that torch cannot see): a fault of the cluster, not of the configuration."""
