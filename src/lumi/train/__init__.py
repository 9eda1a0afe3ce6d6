"""Training engine: config and budgets, optimizers and schedules, the loop, checkpoints, DDP.

from lumi.train.config import load_config
from lumi.train.loop import train
summary = train(load_config("run.yaml", ["optim.lr=1e-3"]), "runs/my-run")
"""
