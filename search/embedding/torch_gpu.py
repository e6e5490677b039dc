"""GPU encoding: the torch model in half precision fed by a host pipeline that keeps the GPU busy.

sentence-transformers tokenises, pads and copies each batch on the host between GPU steps, which
leaves a fast GPU mostly idle on small models. Here a background thread tokenises (parallel Rust),
length-sorts and pads ahead of the GPU into pinned tensors; batches are sized by a token budget
rather than a row count; copies are non-blocking, and pooling and normalisation stay on the GPU.
The same code runs on a CPU in float32, which is how the tests check it against sentence-transformers.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, Sequence

import numpy as np

from search.embedding.spec import ModelSpec, UnsupportedModel, batches_by_length, load_tokenizer

# Texts tokenised and length-sorted together: large enough that sorting removes most padding,
# small enough that the GPU starts after milliseconds.
CHUNK_TEXTS = 8192
QUEUE_BATCHES = 8  # padded batches prepared ahead of the GPU


class TorchEncoder:
    """Mean/CLS-pooled, L2-normalised float32 vectors from a transformers model on `device`."""

    def __init__(self, spec: ModelSpec, device: str, tokens_per_batch: int | None = None) -> None:
        import torch
        from transformers import AutoModel

        self.spec = spec
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.backend = self.identity = "torch-fp16" if self.cuda else "torch-fp32"
        try:
            model = AutoModel.from_pretrained(str(spec.folder))
        except Exception as error:  # noqa: BLE001 - let sentence-transformers try
            raise UnsupportedModel(f"transformers cannot load {spec.folder}: {error}") from error
        self.model = (model.half() if self.cuda else model).to(self.device).eval()
        self.tokenizer = load_tokenizer(spec)
        # A GPU wants many tokens per step; a CPU gains nothing past a few thousand.
        self.tokens_per_batch = tokens_per_batch or (65536 if self.cuda else 4096)
        self.dim = spec.dim
        self.max_seq_length = spec.max_seq_length

    def encode(self, texts: Sequence[str], batch_size: int | None = None, progress: "object | None" = None) -> np.ndarray:
        """Vectors of `texts`; batches hold at most `batch_size` rows (None: as many as the token budget allows)."""
        import torch

        out = torch.empty((len(texts), self.dim), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for rows, ids, mask in self._prefetched(texts, batch_size):
                ids = ids.to(self.device, non_blocking=True)
                mask = mask.to(self.device, non_blocking=True)
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                out[rows.to(self.device, non_blocking=True)] = self._pool(hidden, mask)
                if progress is not None:
                    progress.update(len(rows))
        return out.cpu().numpy()

    def _pool(self, hidden, mask):
        import torch

        if self.spec.pooling == "cls":
            vectors = hidden[:, 0].float()
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            # sum in float32: half precision loses digits over a few hundred tokens
            vectors = (hidden * weights).float().sum(dim=1) / weights.float().sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(vectors, p=2, dim=1)

    def _prefetched(self, texts: Sequence[str], batch_size: int | None) -> Iterator:
        """Batches produced by a background thread (bounded queue), re-raising its errors here."""
        batches: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
        done = object()
        stop = threading.Event()

        def produce() -> None:
            try:
                for batch in self._batches(texts, batch_size):
                    while not stop.is_set():
                        try:
                            batches.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                batches.put(done)
            except BaseException as error:  # noqa: BLE001 - handed to the consumer
                batches.put(error)

        worker = threading.Thread(target=produce, name="tokenise-ahead", daemon=True)
        worker.start()
        try:
            while (item := batches.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()

    def _batches(self, texts: Sequence[str], batch_size: int | None) -> Iterator:
        import torch

        for start in range(0, len(texts), CHUNK_TEXTS):
            chunk = list(texts[start : start + CHUNK_TEXTS])
            encodings = self.tokenizer.encode_batch(chunk)
            for rows, ids, mask in batches_by_length(encodings, batch_size or len(chunk), self.spec.pad_id, self.tokens_per_batch):
                tensors = [torch.from_numpy(rows + start), torch.from_numpy(ids), torch.from_numpy(mask)]
                if self.cuda:
                    tensors = [t.pin_memory() for t in tensors]  # lets the copies run asynchronously
                yield tuple(tensors)
