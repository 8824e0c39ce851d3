"""Kept for code written against earlier versions: training lives in the s2s.training package
(`from s2s.training import train, resume, Trainer`)."""
from s2s.training import (  # noqa: F401
                          CONFIG_FILE,
                          LOG_FILE,
                          TB_DIR,
                          Corpus,
                          Trainer,
                          build_lexicon,
                          config_differences,
                          prepare,
                          resume,
                          train,
)
