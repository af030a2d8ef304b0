"""mlcycle steps: pure cores, thin I/O adapters, the `mlcycle` CLI."""
