"""Passages -> an index folder: generations and their files, BM25, dense vectors, facets, the build."""
