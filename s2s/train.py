"""Kept for code written against earlier versions: training lives in the s2s.training package
(`from s2s.training import train, resume, Trainer`)."""
from s2s.training import *  # noqa: F403
