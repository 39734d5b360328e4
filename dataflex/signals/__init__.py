"""The shared model-signals engine: every component reads model quantities through these modules.

- ``losses``: per-sample and per-token losses, batched and padding-exact.
- ``gradients``: batched per-sample gradients, and the streaming path to projected features.
- ``hooks``: the layer hooks of that engine (one batched forward/backward, per-sample pieces).
- ``projection``: the seeded blockwise random projection (shard-sum exact).
- ``optimizer``: Adam ``exp_avg``/``exp_avg_sq`` by parameter name (torch and DeepSpeed ZeRO).
- ``adam``: LESS's Adam-preconditioned feature Γ of streamed per-sample gradients.
- ``features``: the LESS/NICE feature passes (training and validation gradient features), row
  normalisation, subtask centroids, top-k.
- ``embeddings``: mean-pooled hidden states of the training model; the offline MiniLM encoder; the
  pool and prompt embeddings of the embedding selectors, with the pool's cache.
- ``generation``: seeded on-policy sampling of several responses per prompt.
- ``distributed``: gather per-sample tensors in dataset-index order, broadcast, rank-0 progress bars.
- ``pool``: ``map_pool``, a batched signal over a whole pool, sharded across ranks, in order.
- ``text``: decoded prompts and responses of tokenised rows.
- ``batching``: padding token id lists into batches, a tokenizer's pad id, a model's device.
- ``knn``: cosine nearest neighbours (FAISS; exact or IVF).

Import the submodules directly (``from dataflex.signals.losses import per_sample_losses``); this
package imports nothing heavy on its own.
"""
