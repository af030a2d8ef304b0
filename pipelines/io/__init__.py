"""The services behind thin adapters, created at run time: the platform database, artifact
storage, MLflow tracking and registry, Feast, source readers, the request log and labels."""
