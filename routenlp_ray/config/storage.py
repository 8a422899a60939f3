"""Where the query and feedback log lives."""

from __future__ import annotations

from pydantic import Field

from routenlp_ray.config._base import StrictModel


class StorageConfig(StrictModel):
    """Query-log location and durability settings."""

    log_uri: str = Field(
        "var/querylog",
        description="Local folder or any pyarrow filesystem URI (s3://, gs://, file://) for the query log.",
    )
    spool_dir: str = Field(
        "var/spool", description="Local folder where records for a remote log_uri are made durable before upload."
    )
    segment_max_records: int = Field(5000, ge=1, description="Records per log segment before a new one starts.")
    segment_max_age_s: float = Field(300.0, gt=0, description="Seconds before a segment is sealed and uploaded.")
    fsync: bool = Field(True, description="fsync every write before acknowledging it.")
