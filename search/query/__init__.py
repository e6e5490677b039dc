"""An opened index answering queries: `Engine`, the `Query` it analyses once, retrieval, fusion, filters."""
