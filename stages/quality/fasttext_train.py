"""``python -m stages.quality.fasttext_train INPUT CONFIG_JSON OUTPUT``: train one fastText
classifier and save it, as the only training in a fresh process.

fastText's supervised training is reproducible only as the first training in its process: a
second one in the same process (or one in a Ray worker that ran other native code before) gives
another model from the same file and seed, and on small inputs sometimes "Encountered NaN"
(measured: five fresh processes gave one model; five trainings in one process gave four).
``classifier.train_file`` therefore runs every training here.
"""

from __future__ import annotations

import sys

from stages.quality.config import ClassifierConfig


def main(argv: list[str]) -> None:
    import fasttext

    source, config, output = argv
    cfg = ClassifierConfig.model_validate_json(config)
    model = fasttext.train_supervised(
        input=source, epoch=cfg.epoch, lr=cfg.lr, dim=cfg.dim, wordNgrams=cfg.word_ngrams,
        bucket=cfg.bucket, thread=1, seed=cfg.seed, minCount=2, verbose=0,
    )
    if cfg.quantize:
        model.quantize(input=source, qnorm=True, retrain=False, cutoff=100_000, thread=1)
    model.save_model(output)


if __name__ == "__main__":
    main(sys.argv[1:])
