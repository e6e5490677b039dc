"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class SearchError(Exception):
    """A problem the user can fix; the message says what to do."""


class IndexNotFound(SearchError):
    pass


class IncompatibleIndex(SearchError):
    pass


class IndexDamaged(SearchError):
    """A generation whose files are missing or do not match their checksums: refused, never half read;
    a plain `search index` builds what it cannot trust anew."""


class LoadError(SearchError):
    """A file that cannot be read or decoded (the build skips it and reports why)."""


class QueryError(SearchError):
    """A query that cannot run as asked: empty, too long, an unknown mode, a bad k."""


class FilterError(QueryError):
    """A filter value that cannot be used (empty, not text, or a malformed glob)."""


class BackendError(SearchError):
    """A search backend that cannot be used as asked: a Qdrant server that cannot be reached, refuses
    the API key, is too old, or holds a collection of other vectors. The local index is untouched."""
