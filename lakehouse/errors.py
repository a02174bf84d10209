"""One exception family for the lakehouse; third-party errors are translated at our wrappers."""


class MedshareError(Exception):
    """Base of every error medshare raises on purpose."""


class ConfigError(MedshareError):
    """Settings are missing, malformed or unsafe for the environment."""


class TopologyError(ConfigError):
    """The declarative topology in platform/ is invalid; the message names file, key and problem."""


class StorageError(MedshareError):
    """The object store refused or failed a request."""


class TransportError(MedshareError):
    """The Kafka broker refused or failed a request."""
