"""Challenge submissions: a folder that segments ``/workspace/inputs`` with a trained nnU-Net model, and a local
runner that executes it one case at a time, as the FLARE challenges do, measuring each case.

- :mod:`~nnunet_uda.submission.challenge`: how the challenge runs a submission, its file names, the error;
- :mod:`~nnunet_uda.submission.model`: the trained model and its checks;
- :mod:`~nnunet_uda.submission.build`: the submission folder (:func:`~nnunet_uda.submission.build.build_submission`);
- :mod:`~nnunet_uda.submission.measure`: the time and memory of a process tree;
- :mod:`~nnunet_uda.submission.runner`: a submission run one case at a time, measured
  (:func:`~nnunet_uda.submission.runner.run_submission`).
"""
