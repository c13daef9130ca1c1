from setuptools import find_packages, setup

setup(
    name="nnunet_uda",
    version="0.1.0",
    description="Unsupervised domain adaptation and semi-supervised trainers for nnU-Net v2",
    long_description=open("README.md").read() if __import__("os").path.isfile("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunet_uda", "nnunet_uda.*"]) + ["nnunet_uda_trainers"],
    # trainers/ holds only thin modules that import the package's trainer classes; it is installed
    # as the package nnunet_uda_trainers, the folder nnUNet_extTrainer points to.
    package_dir={"nnunet_uda_trainers": "trainers"},
    install_requires=[
        "nnunetv2==2.8.1",
        "torch>=2.1",
        "batchgenerators>=0.25",
        "dynamic-network-architectures>=0.4.4",
        "SimpleITK>=2.2",
        "acvl-utils>=0.2",
        "numpy",
        "scipy",
        "scikit-image",
        "matplotlib",
        "tqdm",
        "setuptools",
    ],
    # the references the evaluation is tested against: DeepMind's NSD and medpy's HD95/ASSD
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3", "surface-distance==0.1", "medpy>=0.5"]},
    entry_points={
        "console_scripts": [
            "nnUNetv2_uda_trainer_path=nnunet_uda.cli.trainer_path:main",
            "nnUNetv2_uda_verify=nnunet_uda.cli.verify:main",
            "nnUNetv2_uda_phantom=nnunet_uda.cli.phantom:main",
            "nnUNetv2_uda_harmonize=nnunet_uda.cli.harmonize:main",
            "nnUNetv2_uda_plan_and_preprocess=nnunet_uda.cli.plan:main",
            "nnUNetv2_uda_evaluate=nnunet_uda.cli.evaluate:main",
            "nnUNetv2_uda_embeddings=nnunet_uda.cli.embeddings:main",
            "nnUNetv2_uda_postprocess=nnunet_uda.cli.postprocess:main",
            "nnUNetv2_uda_pseudolabel=nnunet_uda.cli.pseudolabel:main",
            "nnUNetv2_uda_export=nnunet_uda.cli.export:main",
            "nnUNetv2_uda_submission=nnunet_uda.cli.submission:main",
            "nnUNetv2_uda_submission_run=nnunet_uda.cli.submission:run_main",
            "nnUNetv2_uda_cyclegan_train=nnunet_uda.cli.cyclegan:main",
            "nnUNetv2_uda_translate=nnunet_uda.cli.translate:main",
            "nnUNetv2_uda_semisupervised=nnunet_uda.cli.semi_supervised:main",
            "nnUNetv2_uda_add_unlabeled=nnunet_uda.cli.semi_supervised:add_unlabeled_main",
        ]
    },
)
