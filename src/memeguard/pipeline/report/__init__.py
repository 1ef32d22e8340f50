"""``report.html``: one self-contained page (images embedded, inline CSS, no scripts, no network).

It opens from a ``file://`` path or an e-mail attachment. Modules, one per figure family: ``scores``
(tables, ROC and precision-recall), ``training`` (curves from ``metrics.jsonl``), ``calibration``
(reliability, histograms), ``threshold`` (operating point, confusion matrices), ``blend`` (weights,
correlations), ``gallery`` (most confidently wrong memes, explanations); ``page`` renders, ``build``
assembles. Figures are drawn with matplotlib's object API on the Agg canvas, so nothing touches pyplot's
global state or needs a display.
"""

from __future__ import annotations

from memeguard.pipeline.report.build import write_report
from memeguard.pipeline.report.common import ENSEMBLE
from memeguard.pipeline.report.gallery import Explainer
from memeguard.pipeline.report.scores import compute_metrics

__all__ = ["ENSEMBLE", "Explainer", "compute_metrics", "write_report"]
