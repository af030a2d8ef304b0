"""mlcycle's Python package: `core` (pure: spec, settings, the table of steps), `ml` (pure: model,
metrics, data), `io` (services behind thin adapters), `steps` (what runs in a step pod), `local`
(only a developer's machine) and the `mlcycle` CLI. Imports point from cli/local down to core."""
