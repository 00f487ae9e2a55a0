"""The whole mesh for the fault tests: its own processes, database and topology."""

from tests.integration.mesh.conftest import mesh  # noqa: F401
