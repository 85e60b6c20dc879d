"""Piccolo's configuration module (found through PICCOLO_CONF=storage.piccolo_conf).

The engine is created without a DSN: nothing connects at import time, and the composition root
points it at the configured database with `storage.postgres.Database`."""

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

DB = PostgresEngine(config={})

APP_REGISTRY = AppRegistry(apps=["storage.piccolo_app"])
