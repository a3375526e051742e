"""Hook specifications and the built-in plugins (accounts, rooms, catalog,
checkout, chat, recording, analytics, governance) as they land."""
