"""open_store builds the store SANDBOX_SNAPSHOT_STORE names, without I/O; a location
of no known kind stops start-up, naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_controller.config import ConfigError, load_settings
from sandbox_controller.snapshots import FileStore, S3Store, open_store


def test_no_store_means_suspension_off() -> None:
    assert open_store(load_settings()) is None


def test_a_file_url_is_a_file_store(tmp_path: Path) -> None:
    store = open_store(load_settings(snapshot_store=f"file://{tmp_path}/archives"))
    assert isinstance(store, FileStore) and store.root == tmp_path / "archives"


def test_an_s3_url_is_a_bucket_and_prefix_with_the_settings_endpoint() -> None:
    settings = load_settings(
        snapshot_store="s3://sandbox-archives/prod/snapshots",
        snapshot_s3_endpoint_url="http://minio.storage:9000",
        snapshot_s3_region="eu-west-1",
    )
    store = open_store(settings)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("sandbox-archives", "prod/snapshots/")


@pytest.mark.parametrize(
    "location", ["s3:///no-bucket", "ftp://host/x", "file://elsewhere/x", "/no/scheme"]
)
def test_a_location_of_no_known_kind_stops_start_up(location: str) -> None:
    with pytest.raises(ConfigError, match="SANDBOX_SNAPSHOT_STORE"):
        load_settings(snapshot_store=location)
