"""Editors behind one interface (:class:`~knowloc.editing.editors.base.Editor`): ``kn`` (the KN update rule on
N_i), ``kn-erase`` (N_i's value vectors zeroed), ``kn-ft`` (fine-tuning of N_i's value vectors), ``ft`` (FT+L:
L-infinity-bounded fine-tuning of one layer's MLP output projection) and ``rome`` (ROME's rank-one update of it);
docs/editing.md, "Editors", and docs/extending.md, "Adding an editor".

Each editor's ``apply(lm, requests)`` is a context manager with the edit of one request or a batch of them in
the weights, restored bit-exactly on exit (also on an exception); :mod:`knowloc.editing.trials` applies one and
measures it with the fact's :class:`~knowloc.editing.evaluate.Baseline` (Rel, Gen, Loc, Avg, dlogPPL, dprob).
"""

from __future__ import annotations

from knowloc.editing.editors.base import AppliedEdit, Editor, EditRequest, check_layer
from knowloc.editing.editors.covariance import CovarianceStore, TextSample, model_samples, shared_store
from knowloc.editing.editors.finetune import FineTune
from knowloc.editing.editors.kn import KnErase, KnUpdate
from knowloc.editing.editors.rome import Rome, rank_one_update

__all__ = ["AppliedEdit", "CovarianceStore", "EditRequest", "Editor", "FineTune", "KnErase", "KnUpdate", "Rome",
           "TextSample", "check_layer", "model_samples", "rank_one_update", "shared_store"]
