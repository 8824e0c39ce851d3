"""Training: prepare (data → tokenizer → encoded corpora, the lexicon), state (what a checkpoint
holds besides weights), keeper (step/last/best checkpoints, best-K, patience), validation
(scores, samples, attention images), optim (optimizer, schedule), resume (what may change) and
trainer (set-up, the loop, one step, budgets, signals).

A run never loses work: checkpoints are atomic and hold everything a resumed run needs to
continue bitwise where the checkpoint left off; SIGINT/SIGTERM finish the current step, save and
exit cleanly. The trainer never decodes itself: validation BLEU goes through
translate.translate_lines and evaluate.score.

    from s2s.training import train, resume
    train(config.load("configs/toy.yaml"), "runs/toy")
    resume("runs/toy", overrides=["train.max_steps=2000"])
"""
from s2s.training.prepare import CONFIG_FILE, Corpus, build_lexicon, prepare
from s2s.training.report import LOG_FILE, TB_DIR
from s2s.training.resume import config_differences, resume
from s2s.training.trainer import Trainer, train

__all__ = ["CONFIG_FILE", "LOG_FILE", "TB_DIR", "Corpus", "Trainer", "build_lexicon",
           "config_differences", "prepare", "resume", "train"]
