"""Files -> Documents: walking folders, decoding text, and one reader per format (notes, records, PDF, HTML)."""
