"""campaignops: an Airflow-orchestrated MLOps platform for personalized marketing campaigns."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of task logs

__version__ = "0.1.0"
