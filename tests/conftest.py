import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

os.environ.setdefault("nnUNet_n_proc_DA", "0")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """The script ``examples/<name>.py`` as a module (the examples are not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_unet(kind: str, num_classes: int = 4, deep_supervision: bool = True) -> nn.Module:
    """A small 3D nnU-Net network (nnU-Net's own classes, nnU-Net's default norm settings)."""
    common = dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=3,
                  strides=[1, 2, 2], num_classes=num_classes, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
                  norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                  nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)
    if kind == "plain":
        return PlainConvUNet(n_conv_per_stage=[2, 2, 2], **common)
    return ResidualEncoderUNet(n_blocks_per_stage=[1, 2, 2], **common)


@pytest.fixture(params=["plain", "resenc"])
def unet_kind(request):
    torch.manual_seed(0)
    return request.param


def tiny_phantom(work, dataset: int, phantom_flags=(), iterations: int = 2, configurations=("3d_fullres",)) -> dict:
    """A 20^3 phantom made and planned (``configurations``) with the real commands; its runner trains one epoch of
    ``iterations``."""
    from nnunet_uda.data.raw import dataset_folder_name
    from nnunet_uda.pipeline import Runner, command, nnunet_environment

    run = Runner(nnunet_environment(work, epochs=1, iterations=iterations, val_iterations=1, processes=1),
                 log=work / "log.txt")
    d, name = str(dataset), dataset_folder_name(dataset, "UDAPhantom")
    run("phantom", command("nnUNetv2_uda_phantom"), "-d", d, "--shape", "20", "20", "20", "--n_test", "1",
        *phantom_flags)
    run("plan", command("nnUNetv2_uda_plan_and_preprocess"), "-d", d, "-bs", "2", "-np", "1", "-c", *configurations)
    return dict(run=run, work=work, dataset=dataset, raw=work / "nnUNet_raw" / name,
                preprocessed=work / "nnUNet_preprocessed" / name)


def train_tiny(phantom: dict, trainer: str, resume: bool = True, configuration: str = "3d_fullres",
               domains=None) -> dict:
    """``nnUNetv2_train`` of ``trainer`` on a :func:`tiny_phantom` for one epoch, a second epoch through ``--c``
    (unless not ``resume``), ``nnUNetv2_predict`` of every domain's test set (of ``domains`` if given; none if
    empty). Returns the phantom's paths with the results folder, the checkpoint written after the first epoch and
    the predictions."""
    from nnunet_uda.pipeline import command, predict_test_sets
    from nnunet_uda.planning import DEFAULT_PLANS

    run, work = phantom["run"], phantom["work"]
    train = (command("nnUNetv2_train"), str(phantom["dataset"]), configuration, "0", "-tr", trainer,
             "-p", DEFAULT_PLANS, "-device", "cpu")
    run("train", *train)
    results = work / "nnUNet_results" / phantom["raw"].name / f"{trainer}__{DEFAULT_PLANS}__{configuration}" / "fold_0"
    first = torch.load(results / "checkpoint_final.pth", weights_only=False)
    if resume:
        run("resume", *train, "--c", extra_env={"nnUNet_uda_epochs": "2"})
    predictions = predict_test_sets(run, phantom["raw"], phantom["dataset"], trainer,
                                    work / f"predictions_{trainer}_{configuration}", work, configuration=configuration,
                                    domains=domains) if domains != () else None
    return dict(phantom, results=results, first=first, predictions=predictions)


def train_tiny_phantom(work, dataset: int, trainer: str, phantom_flags=(), iterations: int = 2,
                       resume: bool = True) -> dict:
    """:func:`train_tiny` on a new :func:`tiny_phantom`."""
    return train_tiny(tiny_phantom(work, dataset, phantom_flags, iterations), trainer, resume)


@pytest.fixture(scope="session")
def uda_model(tmp_path_factory):
    """A tiny nnUNetTrainerUDA model (dataset 953, fold 0, conditional norms of CT, T1 and T2) trained and its test
    sets predicted with the real commands: the model of the submission and export tests."""
    return train_tiny_phantom(tmp_path_factory.mktemp("uda_model"), 953, "nnUNetTrainerUDA",
                              ("--n_source", "5", "--n_target", "1"), iterations=1, resume=False)


@pytest.fixture(scope="session")
def semi_supervised_phantom(tmp_path_factory):
    """The co-training trainers' shared fixture: half of 10 CT cases labeled, planned in 3d_fullres and 2d, 3
    iterations an epoch."""
    return tiny_phantom(tmp_path_factory.mktemp("semi_supervised"), 954,
                        ("--semi_supervised", "0.5", "--n_source", "10"), iterations=3,
                        configurations=("3d_fullres", "2d"))


@pytest.fixture(scope="session")
def unpaired_phantom(tmp_path_factory):
    """CT labeled, T1 and T2 unlabeled (no modality pairs), planned in 3d_fullres and 2d: CISFA's and the 2d
    tests' shared fixture."""
    return tiny_phantom(tmp_path_factory.mktemp("unpaired"), 955, ("--n_source", "5", "--n_target", "2"),
                        configurations=("3d_fullres", "2d"))


@pytest.fixture
def build_trainer(monkeypatch, tmp_path):
    """Builds a trainer as nnUNetv2_train does, on the CPU, from a run's preprocessed data (results in tmp_path)."""
    def build(run, trainer_class, configuration="3d_fullres"):
        monkeypatch.setenv("nnUNet_preprocessed", str(run["preprocessed"].parent))
        monkeypatch.setenv("nnUNet_results", str(tmp_path))
        return _build(run, trainer_class, configuration)
    return build


def _build(run, trainer_class, configuration, batch_size=None):
    from nnunet_uda.planning import DEFAULT_PLANS

    preprocessed = run["preprocessed"]
    plans = json.loads((preprocessed / f"{DEFAULT_PLANS}.json").read_text())
    plans["continue_training"] = False
    if batch_size is not None:
        plans["configurations"][configuration]["batch_size"] = batch_size
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer = trainer_class(plans, configuration, 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def changed(before: dict, module) -> bool:
    """Whether any floating-point entry of ``module``'s state differs from the saved ``before``."""
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if v.is_floating_point())


def on_gloo_ranks(worker, tmp_path, *args, world: int = 2, before_joining=None) -> list:
    """``worker(rank, *args)`` in ``world`` CPU processes joined in a gloo process group (DDP's collectives on the
    CPU); returns what each rank's call returned, in rank order. ``before_joining(rank, *args)``, if given, runs
    before the process joins the group and its result is the worker's one argument (nnU-Net trainers must be built
    outside DDP to stay on the CPU). Both must be module-level functions."""
    mp.spawn(_gloo_process, args=(world, worker, tmp_path, args, before_joining), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def _gloo_process(rank, world, worker, tmp_path, args, before_joining):
    torch.set_num_threads(1)
    if before_joining is not None:
        args = (before_joining(rank, *args),)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'gloo_init'}", rank=rank, world_size=world)
    try:
        torch.save(worker(rank, *args), tmp_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def as_ddp_rank(trainer) -> None:
    """What nnU-Net's ``initialize`` does under DDP, done on the CPU inside a gloo group (nnU-Net itself moves DDP
    trainers to CUDA): the rank's share of the batch and of foreground oversampling, the loss with its DDP deep
    supervision weights, network A wrapped in DDP (and a co-training trainer's partners, by the trainer)."""
    trainer.is_ddp, trainer.local_rank = True, dist.get_rank()
    trainer._set_batch_size_and_oversample()
    trainer.loss = trainer._build_loss()
    trainer.network = DDP(trainer.network)
    if hasattr(trainer, "wrap_partners_in_ddp"):
        trainer.wrap_partners_in_ddp()


def build_before_joining(rank, run, results, trainer_class, batch_size=4, configuration="3d_fullres"):
    """For :func:`on_gloo_ranks`: ``trainer_class`` built on the CPU from ``run`` with the planned ``batch_size``,
    from one seed on every rank (the same networks, as DDP's broadcast makes them)."""
    os.environ.update(nnUNet_preprocessed=str(run["preprocessed"].parent), nnUNet_results=str(results))
    torch.manual_seed(0)
    return _build(run, trainer_class, configuration, batch_size)


def ddp_train_steps(trainer, steps: int = 1) -> list[dict]:
    """``steps`` iterations of ``trainer`` as a DDP rank (:func:`as_ddp_rank`), each rank drawing its own batches;
    the batches, for the caller to check that ranks saw different data."""
    as_ddp_rank(trainer)
    torch.manual_seed(dist.get_rank())
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    batches = [next(trainer.dataloader_train) for _ in range(steps)]
    for batch in batches:
        trainer.train_step(batch)
    return batches


def trained_states(trainer) -> dict:
    """Copies of the state dicts of network A and of every module the trainer keeps in its checkpoint (network B,
    heads, banks, queues, GAN networks), by name."""
    modules = {name: m for name, m in trainer.extra_state.items() if isinstance(m, nn.Module)}
    return {name: {k: v.clone() for k, v in m.state_dict().items()}
            for name, m in {"network": trainer.bare_network, **modules}.items()}


def assert_same_on_every_rank(ranks: list[dict]) -> None:
    """Every state of :func:`trained_states` equal on every rank."""
    for name, state in ranks[0].items():
        for other in ranks[1:]:
            assert all(torch.equal(v, other[name][k]) for k, v in state.items()), name
