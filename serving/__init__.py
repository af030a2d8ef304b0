"""The Ray Serve application of mlcycle: an ingress that routes to one deployment per model
version, built from typed arguments (`serving.config.ServingArgs`) by `serving.app.build_app`."""
