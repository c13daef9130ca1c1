"""nnUNetv2_uda_verify -d DATASET: check a raw dataset against nnunet_uda's and nnU-Net's conventions."""
from __future__ import annotations

import argparse

from nnunet_uda.data.raw import find_raw_dataset
from nnunet_uda.verify import DatasetError, verify_dataset


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Check an nnU-Net raw dataset with a domain table (dataset.json "
                                                 "\"uda\") against nnunet_uda's conventions, then nnU-Net's own.")
    parser.add_argument("-d", required=True, help="dataset id, name or folder")
    parser.add_argument("-np", type=int, default=2, help="processes for nnU-Net's check")
    parser.add_argument("--skip_nnunet", action="store_true", help="run only nnunet_uda's checks")
    args = parser.parse_args(argv)
    try:
        folder = find_raw_dataset(args.d)
        verify_dataset(folder, num_processes=args.np, nnunet_checks=not args.skip_nnunet)
    except (DatasetError, FileNotFoundError, RuntimeError, ValueError) as e:
        raise SystemExit(f"ERROR: {e}")
    print(f"{folder}: OK")


if __name__ == "__main__":
    main()
