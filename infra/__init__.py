"""Local development/test infrastructure (``v2w-stack``): object store, MLflow and Ray on loopback."""
