"""ML Metadata's SQLite store, opened in one place: the local runner (the pipeline's own
connection, and marking a dead run's executions), the run summary and the Trainer's warm
start (the latest blessed model) all take their connection from here."""
from __future__ import annotations

import os


def sqlite_config(path: str, readonly: bool = False):
    """The ConnectionConfig of the SQLite store at `path`: read-only, or read-write and
    created when missing (what TFX's sqlite_metadata_connection_config builds)."""
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = path
    cfg.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READONLY if readonly else
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
    return cfg


def open_store(path: str, readonly: bool = True):
    """A MetadataStore over the SQLite file at `path`, or None when there is no such file (a
    read-only store cannot be created: no run has written one yet)."""
    if readonly and not os.path.exists(path):
        return None
    from ml_metadata.metadata_store import metadata_store

    return metadata_store.MetadataStore(sqlite_config(path, readonly))
