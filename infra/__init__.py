"""The embedded local stack: SeaweedFS (S3), MLflow and Airflow processes."""
