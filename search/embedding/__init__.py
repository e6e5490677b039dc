"""Sentence embeddings: which model reads which language, and one `Encoder` verb over swappable backends.

models (plan and routing) -> spec (what a model is made of) -> encoder (the facade) over
onnx_runtime (CPU, int8; its recipe in onnx_export), torch_gpu (CUDA) or sentence-transformers.
"""
