"""The platform's Airflow assets, by name and URI: a raw batch landed (producers announce it; it
triggers `campaign_retrain`) and a new champion was promoted (published by `promote`, for
downstream scoring). The others name what each task reads and writes (the tasks' inlets and
outlets), so Airflow's asset graph and the OpenLineage events the tasks emit
(apache-airflow-providers-openlineage; transport in infra/stack.airflow_env) carry the S3 datasets
as inputs and outputs. Validated data and features are DVC-versioned: their content lives in the
DVC remote (s3://<bucket>/dvc, by md5), and their URIs here are the logical names of those
outputs. Plain strings here; `airflow_assets()` builds the Asset objects for DAGs."""
from __future__ import annotations

RAW_BATCH = "campaignops.raw_batch"
CHAMPION = "campaignops.champion"
QUARANTINE = "campaignops.quarantine"
VALIDATED = "campaignops.validated"
FEATURES = "campaignops.features"
MODEL_RUNS = "campaignops.model_runs"
DAY_RECORDS = "campaignops.day_records"
SCORES = "campaignops.scores"
FEEDBACK = "campaignops.feedback"
ALLOCATIONS = "campaignops.allocations"


def uris(bucket: str) -> dict[str, str]:
    return {RAW_BATCH: f"s3://{bucket}/raw", CHAMPION: f"s3://{bucket}/mlflow",
            QUARANTINE: f"s3://{bucket}/quarantine", VALIDATED: f"s3://{bucket}/dvc/data/validated",
            FEATURES: f"s3://{bucket}/dvc/data/features", MODEL_RUNS: f"s3://{bucket}/mlflow/runs",
            DAY_RECORDS: f"s3://{bucket}/retrain", SCORES: f"s3://{bucket}/scores",
            FEEDBACK: f"s3://{bucket}/feedback", ALLOCATIONS: f"s3://{bucket}/allocations"}


def airflow_assets(bucket: str) -> dict:
    """Asset objects of RAW_BATCH and CHAMPION (schedules and asset events) and lineage entities
    (`File`) of the others: inlets and outlets that the OpenLineage provider turns into S3 datasets
    (an s3:// Asset needs the amazon provider's converter for that; a File does not), without
    Airflow asset events nobody consumes. RAW_BATCH and CHAMPION as inlets: use lineage(bucket)."""
    from airflow.sdk import Asset

    out = lineage(bucket)
    out.update({name: Asset(name=name, uri=uris(bucket)[name]) for name in (RAW_BATCH, CHAMPION)})
    return out


def lineage(bucket: str) -> dict:
    """A lineage entity (OpenLineage dataset by URL) for every name, RAW_BATCH and CHAMPION included."""
    from airflow.providers.common.compat.lineage.entities import File

    return {name: File(url=uri) for name, uri in uris(bucket).items()}


def announce_batch(settings, batch: str, manifest_uri: str) -> dict:
    """Tell Airflow a raw batch landed (an asset event on RAW_BATCH with the batch id as extra),
    what an export job does after writing the manifest; triggers `campaign_retrain` for it."""
    from campaignops.infra.airflow_client import AirflowClient

    client = AirflowClient.from_settings(settings)
    return client.post_asset_event(RAW_BATCH, {"batch": batch, "manifest": manifest_uri})
