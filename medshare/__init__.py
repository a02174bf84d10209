"""The `medshare` command line: thin wiring of the platform's packages."""
