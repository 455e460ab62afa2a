"""campaignops: an Airflow-orchestrated MLOps platform for personalized marketing campaigns."""

__version__ = "0.1.0"
