"""Pipeline steps as plain functions, shared by the CLI, DVC stages and Airflow tasks."""
