"""The JSON schemas (JSON Schema 2020-12) of every file the tools hand to each other; package data."""
