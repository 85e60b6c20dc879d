from pathlib import Path

from piccolo.conf.apps import AppConfig

from storage.tables import AccessToken, Outbox, Tweet, User

APP_CONFIG = AppConfig(
    app_name="chirp",
    migrations_folder_path=str(Path(__file__).parent / "migrations"),
    table_classes=[User, AccessToken, Tweet, Outbox],
)
