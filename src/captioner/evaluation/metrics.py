"""Caption metrics through pycocoevalcap (PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D).

Needs Java for the tokenizer and METEOR. SPICE is never called (it downloads CoreNLP).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence

from ..core.errors import ScoringError
from ..data.vocab import tokenize

ALL_METRICS = ("bleu", "meteor", "rouge", "cider")


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the Java tokenizer's progress line (it writes to the inherited stderr fd)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _simple_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    return {k: [" ".join(tokenize(c)) for c in v] for k, v in captions.items()}


def score(
    references: Mapping[str, Sequence[str]],
    hypotheses: Mapping[str, str],
    metrics: Iterable[str] = ALL_METRICS,
    tokenizer: str = "auto",
) -> dict[str, float]:
    """Corpus scores for hypotheses[id] against references[id] (several per id).

    tokenizer: "ptb" (the official Java PTB tokenizer), "simple" (captioner's own lower-case
    word split, for machines without Java; BLEU/CIDEr differ from PTB's by ~0.001), or "auto".
    """
    metrics = list(metrics)
    java = has_java()
    if tokenizer == "ptb" or "meteor" in metrics:
        require_java()
    ids = sorted(hypotheses)
    missing = [i for i in ids if not references.get(i)]
    if missing:
        raise ValueError(f"no references for {len(missing)} images, e.g. {missing[0]}")
    refs = {i: list(references[i]) for i in ids}
    hyps = {i: [hypotheses[i]] for i in ids}
    if tokenizer == "simple" or (tokenizer == "auto" and not java):
        gts, res = _simple_tokenize(refs), _simple_tokenize(hyps)
    else:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        with _quiet_stderr():
            gts = tok.tokenize({i: [{"caption": c} for c in v] for i, v in refs.items()})
            res = tok.tokenize({i: [{"caption": c} for c in v] for i, v in hyps.items()})
    out: dict[str, float] = {}
    for name in metrics:
        if name == "bleu":
            from pycocoevalcap.bleu.bleu import Bleu

            values, _ = Bleu(4).compute_score(gts, res, verbose=0)
            out.update({f"BLEU-{n + 1}": float(v) for n, v in enumerate(values)})
        elif name == "meteor":
            from pycocoevalcap.meteor.meteor import Meteor

            out["METEOR"] = float(Meteor().compute_score(gts, res)[0])
        elif name == "rouge":
            from pycocoevalcap.rouge.rouge import Rouge

            out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        elif name == "cider":
            from pycocoevalcap.cider.cider import Cider

            out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
        else:
            raise ValueError(f"unknown metric {name!r}; choose from {ALL_METRICS}")
    return out


def has_java() -> bool:
    return shutil.which("java") is not None


def require_java() -> None:
    if not has_java():
        raise ScoringError(
            "scoring captions needs Java (pycocoevalcap runs the PTB tokenizer and METEOR in "
            "Java): install a JRE, e.g. apt-get install default-jre-headless"
        )


def score_records(
    records: Sequence,
    captions: Sequence[str],
    metrics: Iterable[str] = ALL_METRICS,
    tokenizer: str = "auto",
) -> dict[str, float]:
    """Scores of one caption per dataset record against the record's references, plus the mean
    length in words of the captions and of the references."""
    refs = {str(i): list(r.captions) for i, r in enumerate(records)}
    hyps = {str(i): c for i, c in enumerate(captions)}
    out = score(refs, hyps, metrics, tokenizer)
    out["mean_length"] = sum(len(tokenize(c)) for c in captions) / max(1, len(captions))
    lengths = [len(tokenize(c)) for r in records for c in r.captions]
    out["reference_mean_length"] = sum(lengths) / max(1, len(lengths))
    return out
