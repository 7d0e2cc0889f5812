"""The scale-out deployment's tooling: lock compilation, the .env writer, and the
rehearsal of the deployment's engines as local processes (deploy/rehearsal)."""
