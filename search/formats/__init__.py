"""Readers for formats other than plain text and markdown; search.loading dispatches to them."""
