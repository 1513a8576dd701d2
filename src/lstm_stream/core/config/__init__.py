"""The runner's configuration: dataclasses from TOML, overrides and validation."""
