"""Test-wide settings: one intra-op thread, so parallel test processes (and Ray
workers) do not spin against each other on a 2-core machine."""

import torch

torch.set_num_threads(1)
