"""The platform's Airflow assets, by name and URI: a raw batch landed (producers announce it; it
triggers `campaign_retrain`) and a new champion was promoted (published by `promote`, for
downstream scoring). Plain strings here; `airflow_assets()` builds the Asset objects for DAGs."""
from __future__ import annotations

RAW_BATCH = "campaignops.raw_batch"
CHAMPION = "campaignops.champion"


def uris(bucket: str) -> dict[str, str]:
    return {RAW_BATCH: f"s3://{bucket}/raw", CHAMPION: f"s3://{bucket}/mlflow"}


def airflow_assets(bucket: str) -> dict:
    from airflow.sdk import Asset

    return {name: Asset(name=name, uri=uri) for name, uri in uris(bucket).items()}


def announce_batch(settings, batch: str, manifest_uri: str) -> dict:
    """Tell Airflow a raw batch landed (an asset event on RAW_BATCH with the batch id as extra),
    what an export job does after writing the manifest; triggers `campaign_retrain` for it."""
    from campaignops.infra.airflow_client import AirflowClient

    client = AirflowClient.from_settings(settings)
    return client.post_asset_event(RAW_BATCH, {"batch": batch, "manifest": manifest_uri})
