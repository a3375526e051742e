"""Holds default.toml, shipped as package data so an installed server finds its defaults."""
