"""Conformance kit: test suites a backend inherits to prove it keeps the contract.

`BackupEnvContract` tests the storage primitives, `BackupEngineContract` the
engine's round trip over them; `BackendConformance` is both.
"""
from .engine_contract import BackendConformance, BackupEngineContract
from .env_contract import BackupEnvContract

__all__ = ["BackendConformance", "BackupEngineContract", "BackupEnvContract"]
