"""The Ray Serve application of mlcycle, built from typed arguments (`serving.config.ServingArgs`)
by `serving.app.build_app`: an ingress that judges each request against the pipeline's contract
and scores it in its own process with the versions it routes to (one hop), or, with
`serving.version_deployments`, calls a deployment per model version. The hot path's records are
typed (`serving.records`)."""
