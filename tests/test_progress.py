import math

import pytest

from nnunet_uda.data.loader import split_batch
from nnunet_uda.training.progress import NNUNET_KEYS, ExtendedLocalLogger


def test_extra_scalars_are_logged_padded_and_plotted(tmp_path):
    logger = ExtendedLocalLogger()
    for epoch in range(3):
        for key in NNUNET_KEYS:
            logger.log(key, float(epoch) if key != "dice_per_class_or_region" else [0.5], epoch)
        if epoch >= 1:  # a scalar that first appears in epoch 1
            logger.register("l_fpc", epoch)
            logger.log("l_fpc", 0.1 * epoch, epoch)
    values = logger.get_value("l_fpc", None)
    assert math.isnan(values[0]) and values[1:] == [0.1, 0.2]
    assert logger.extra_keys == ["l_fpc"]
    logger.plot_progress_png(str(tmp_path))
    assert (tmp_path / "progress.png").stat().st_size > 10_000


def test_split_batch_rounds_to_whole_samples():
    assert split_batch(2, 0.5) == (1, 1)
    assert split_batch(5, 0.5) == (2, 3)
    assert split_batch(2, 0.0) == (0, 2)
    assert split_batch(3, 1.0) == (3, 0)
    with pytest.raises(RuntimeError, match="a batch of 1 with a share of 0.5 for target cases holds no target case"):
        split_batch(1, 0.5, ("target", "source"))
