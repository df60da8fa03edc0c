"""Training: ``ppl-diffusion train`` as a function, split by concern.

====================  ===========================================================================
``config.py``         :class:`TrainConfig`, its validation, the device, :func:`build_diffusion` (nets by name:
                      the presets and ``NET_BUILDERS``, :func:`register_net`), :func:`lr_at`, :func:`budget_warnings`
``run_dir.py``        the run folder: ``config.json``, :class:`MetricsLog`, finding and restoring a checkpoint
``batches.py``        :class:`BatchStream`: the examples of each optimizer step
``pyro_trainer.py``   one step on the Pyro backend (:class:`PyroTrainer`); the NumPyro twin lives in
                      :mod:`ppl_diffusion.numpyro.train`
``validation.py``     ``val_examples``: the held-out examples, the validation estimate, the best weights (best.pt)
``loop.py``           :func:`train`: the loop shared by the backends, checkpoints, metrics, progress bar
``load.py``           :func:`load_trained`: a trained model from a run folder, on either backend
====================  ===========================================================================
"""

from .batches import BatchStream
from .config import (BACKENDS, DEVICES, FORMAT, METRICS_FORMATS, NET_BUILDERS, RESUMABLE_KEYS, SCHEDULES, BudgetWarning,
                     TrainConfig, budget_warnings, build_diffusion, build_schedule, lr_at, register_net, resolve_device)
from .load import load_trained
from .loop import TrainingDiverged, TrainResult, train
from .pyro_trainer import PyroTrainer, make_trainer
from .run_dir import METRIC_FIELDS, MetricsLog

__all__ = ["BACKENDS", "DEVICES", "FORMAT", "METRICS_FORMATS", "METRIC_FIELDS", "NET_BUILDERS", "RESUMABLE_KEYS",
           "SCHEDULES", "BatchStream", "BudgetWarning", "MetricsLog", "PyroTrainer", "TrainConfig", "TrainResult", "TrainingDiverged",
           "budget_warnings", "build_diffusion", "build_schedule", "load_trained", "lr_at", "make_trainer", "register_net",
           "resolve_device", "train"]
