"""The plugin manager: finds plugins through the ``shopcast.plugins`` entry
point group (built-in and third-party alike), filters them by ``[plugins]``,
checks their hooks and calls them, awaiting what they return.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from shopcast.plugins import _hookspecs
from shopcast.plugins._hookspecs import PROJECT

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "PluginManager"]

ENTRY_POINT_GROUP = "shopcast.plugins"
_PREFIX = "shopcast_"

log = logging.getLogger("shopcast.plugins")


class PluginError(Exception):
    """A plugin cannot be loaded: an unknown hook, a missing dependency, an
    entry point that fails to import, a name in [plugins] that matches none.

    ``key`` names the config key or plugin at fault; start-up stops with it.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class _Pluggy(pluggy.PluginManager):
    """Every ``shopcast_*`` callable of a plugin is a hook implementation,
    marked or not (as pytest treats ``pytest_*``), so that a misspelt hook is
    caught by ``check_pending`` instead of silently never being called."""

    def parse_hookimpl_opts(self, plugin: object, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(_PREFIX):
            method = getattr(plugin, name, None)
            if inspect.isroutine(method):
                return {}
        return opts


class PluginManager:
    """The loaded plugins and the way to call their hooks.

    Resource handling: holds plugin objects only; plugins own their state.
    Error handling: loading raises PluginError; ``notify`` logs a failing
    plugin and goes on with the others, ``collect`` and ``veto`` let the
    exception through (a registration or a veto that fails must stop the
    action it guards).
    """

    def __init__(self, *, enabled: Iterable[str] = ("*",), disabled: Iterable[str] = ()) -> None:
        self._pm = _Pluggy(PROJECT)
        self._pm.add_hookspecs(_hookspecs)
        self._enabled = tuple(enabled)
        self._disabled = tuple(disabled)
        self.permissions: dict[str, tuple[str, ...]] = {}

    # --- loading ----------------------------------------------------------------------------

    def load_entry_points(self) -> list[str]:
        """Register every enabled entry point of the group, in name order;
        returns their names."""
        points = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        wildcard = "*" in self._enabled
        for name in self._enabled:
            if name != "*" and name not in points:
                raise PluginError("plugins.enabled", f"no installed plugin is called {name!r}; "
                                  "installed: " + ", ".join(sorted(points)))
        loaded = []
        for name in sorted(points):
            if name in self._disabled or not (wildcard or name in self._enabled):
                continue
            try:
                target = points[name].load()
            except Exception as exc:
                raise PluginError(name, f"entry point {points[name].value} failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc
            self.register(target() if inspect.isclass(target) else target, name)
            loaded.append(name)
        return loaded

    def register(self, plugin: object, name: str) -> None:
        """Register one plugin object under ``name`` (the external path for
        embedders and tests; entry points go through here too)."""
        if self._pm.get_plugin(name) is not None:
            raise PluginError(name, "a plugin of this name is already registered")
        try:
            self._pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(name, str(exc)) from None

    def check(self) -> None:
        """Refuse unknown hooks and missing dependencies; call once every
        plugin is registered."""
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(self._pm.get_name(exc.plugin) or "plugins",
                              f"{exc}; known hooks are listed in plugins/_hookspecs.py") from None
        for name, plugin in self._pm.list_name_plugin():
            for needed in getattr(plugin, "requires", ()):
                if self._pm.get_plugin(needed) is None:
                    raise PluginError(name, f"needs the plugin {needed!r}, which is not enabled")

    # --- access -----------------------------------------------------------------------------

    def get(self, name: str) -> Any:
        """The plugin registered as ``name``, or None."""
        return self._pm.get_plugin(name)

    def names(self) -> list[str]:
        return [name for name, _ in self._pm.list_name_plugin()]

    # --- calling ----------------------------------------------------------------------------

    async def collect(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call every implementation, await awaitable results, return the
        non-None ones (registration hooks)."""
        results = getattr(self._pm.hook, hook)(**kwargs)
        out = []
        for result in results:
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                out.append(result)
        return out

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of a lifecycle hook, each on its own: a
        plugin that raises is logged and the others still hear the event."""
        caller = getattr(self._pm.hook, hook)
        for impl in reversed(caller.get_hookimpls()):
            try:
                result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook)

    def veto(self, hook: str, **kwargs: Any) -> str | None:
        """The first plugin's reason to refuse, or None (``firstresult`` hooks)."""
        reason = getattr(self._pm.hook, hook)(**kwargs)
        if inspect.isawaitable(reason):
            if inspect.iscoroutine(reason):
                reason.close()
            raise TypeError(f"{hook} implementations must answer synchronously")
        return reason
