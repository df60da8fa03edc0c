"""Training: ``ppl-diffusion train`` as a function, split by concern.

====================  ===========================================================================
``config.py``         :class:`~ppl_diffusion.train.config.TrainConfig`, its validation, the device, :func:`~ppl_diffusion.train.config.build_diffusion` (nets by name:
                      the presets and ``NET_BUILDERS``, :func:`~ppl_diffusion.nets.build.register_net`), :func:`~ppl_diffusion.train.config.lr_at`, :func:`~ppl_diffusion.train.config.budget_warnings`
``run_dir.py``        the run folder: ``config.json``, :class:`~ppl_diffusion.train.run_dir.MetricsLog`, finding and restoring a checkpoint
``batches.py``        :class:`~ppl_diffusion.train.batches.BatchStream`: the examples of each optimizer step
``pyro_trainer.py``   one step on the Pyro backend (:class:`~ppl_diffusion.train.pyro_trainer.PyroTrainer`); the NumPyro twin lives in
                      :mod:`ppl_diffusion.numpyro.train`
``validation.py``     ``val_examples``: the held-out examples, the validation estimate, the best weights (best.pt)
``loop.py``           :func:`~ppl_diffusion.train.loop.train`: the loop shared by the backends, checkpoints, metrics, progress bar
``load.py``           :func:`~ppl_diffusion.train.load.load_trained`: a trained model from a run folder, on either backend
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
