"""The training layer: one loop (:class:`Trainer`) on accelerate, and what it stands on.

- :mod:`carl.training.trainer`: the loop (``setup -> train -> cleanup``);
- :mod:`carl.training.jobs`: what is trained (an AR model, a tokenizer);
- :mod:`carl.training.schedule`: batching, learning rate, warm-up and decay;
- :mod:`carl.training.checkpoints`, :mod:`carl.training.state_files`: self-verifying, pickle-free checkpoints;
- :mod:`carl.training.run_folder`: the output folder a run owns (claim, lock, ``--overwrite``);
- :mod:`carl.training.logs`: step lines, the progress bar, TensorBoard, the summary;
- :mod:`carl.training.accel`: the EMA on the device, ``torch.compile``, fused optimizers;
- :mod:`carl.training.nonfinite`, :mod:`carl.training.signals`, :mod:`carl.training.processes`:
  divergence, SIGINT/SIGTERM and several processes;
- :mod:`carl.training.cache`: token caches; :mod:`carl.training.checks`: the data against the tokenizer.
"""

from carl.training.trainer import Trainer

__all__ = ["Trainer"]
