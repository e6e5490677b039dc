"""Documents -> passages and tokens: language detection, jieba BM25 tokens, token-budget chunking."""
