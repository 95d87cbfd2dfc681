"""The fast attribution engine: exact integrated gradients without recomputing the prompt.

Why it is exact: in a causal model, replacing the activation at the last prompt position P-1 changes nothing
at positions < P-1. So the prefix is run once, and every block's key/value states for it are kept.
The integration points (layers x baselines x steps) are then packed into one batch of "rows" that carry
only the positions P-1.. (last prompt token + teacher-forced target tokens), and each row for layer l
joins the stack after block l, from the clean run (nothing below l differs; see `staircase_gradients`).
The batch therefore grows like a staircase from block to block, the unembedding runs once for all rows,
and one backward pass yields every row's gradient with respect to its own patched activation. Parameters
are frozen, so no parameter gradient is ever formed.

Blocks are re-run with the exact positional/keyword arguments the model itself passed them in a capture
pass (masks, rotary embeddings, sliding-window layouts; :mod:`knowloc.models.block_calls`), with the cache
argument swapped for a `PrefixCache` that holds the prefix keys/values once per query and a registered
attention function (`prefix_attention`) that reads them from there. This keeps the engine family-agnostic: no
per-family attention code. An unpatched clean row, entering at block 0 in a query's first chunk, computes the
clean residual stream and activations the other rows start from and returns them (`CleanRun`) for the later
chunks.

Several queries of one shape (prefix length, target length, number of baselines: `batch_key`) have the same
rows and the same recorded block calls, so one staircase carries them all (`attribute_fast_many`): the batch is
laid out query-major ([Q, rows, n_new, d_model], flattened for each block call), each query with its own clean
row, prefix, baselines, targets and gradients. A block call, the unembedding and the backward pass then serve Q
queries at once, which divides the operator calls (kernel launches on a GPU) per attribution by about Q.
`attribute_fast` is the one-query case of the same code.

One module per idea:

* :mod:`.prefix_attention`: each query's prefix keys/values and the attention function that reads them
  (registered in transformers' registry on first use);
* :mod:`.prepare`: the prefix pass and each block's recorded call (`Prepared`);
* :mod:`.staircase`: one chunk's staircase batch and its backward pass (`staircase_gradients`, `CleanRun`);
* :mod:`.unembedding`: the objective's gradient through the unembedding, by hand;
* :mod:`.memory`: rows per chunk under a memory bound;
* :mod:`.driver`: `attribute_fast` / `attribute_fast_many`, the chunks of Q queries and the scores.

What the engine keeps between queries lives in the model's :func:`knowloc.attribution.cache.engine_cache`.
"""

from knowloc.attribution.engine.driver import attribute_fast, attribute_fast_many, batch_key
from knowloc.attribution.engine.memory import default_max_rows
from knowloc.attribution.engine.prepare import Prepared, prepare
from knowloc.attribution.engine.staircase import CleanRun, StaircaseResult, staircase_gradients

__all__ = ["attribute_fast", "attribute_fast_many", "batch_key", "default_max_rows", "Prepared", "prepare",
           "CleanRun", "StaircaseResult", "staircase_gradients"]
