"""Hook specifications, the plugin manager, storage and the built-in plugins
(accounts, rooms, discovery, webhooks, openapi; catalog, checkout, chat,
recording, analytics and governance as they land).

Built-in plugins are entry points of the group ``shopcast.plugins`` in
pyproject.toml, loaded exactly as third-party ones are.
"""

from shopcast.plugins._api import Api, Operation, Query
from shopcast.plugins._hookspecs import hookimpl, hookspec
from shopcast.plugins._manager import ENTRY_POINT_GROUP, PluginError, PluginManager
from shopcast.plugins._storage import Database, Migration, Repository, StorageError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Api",
    "Database",
    "Migration",
    "Operation",
    "PluginError",
    "PluginManager",
    "Query",
    "Repository",
    "StorageError",
    "hookimpl",
    "hookspec",
]
