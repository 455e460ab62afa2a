"""Model architectures, the MLflow pyfunc wrapper and evaluation metrics."""
