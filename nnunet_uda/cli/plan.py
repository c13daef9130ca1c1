"""nnUNetv2_uda_plan_and_preprocess -d ID: nnU-Net planning with domains (see nnunet_uda.planning)."""
from __future__ import annotations

import argparse

from nnunet_uda.planning import PLANNERS, plan_and_preprocess
from nnunet_uda.verify import DatasetError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Verify, fingerprint, plan (ResEnc M by default) and preprocess a "
                                                 "dataset with a domain table; write domain-aware folds.")
    parser.add_argument("-d", type=int, required=True, help="dataset id")
    parser.add_argument("-pl", default="ResEncM", choices=list(PLANNERS),
                        help="planner preset: ResEncM (default), ResEncL, ResEncXL, or nnU-Net's default planner")
    parser.add_argument("-c", nargs="+", default=["3d_fullres"], help="configurations to preprocess")
    parser.add_argument("-np", type=int, default=2, help="processes")
    parser.add_argument("-folds", type=int, default=5, help="cross-validation folds over labeled cases")
    parser.add_argument("-bs", type=int, default=None,
                        help="replace the planned batch size (e.g. 2 for CPU runs)")
    parser.add_argument("--no_verify", action="store_true", help="skip the dataset checks")
    args = parser.parse_args(argv)
    try:
        plans = plan_and_preprocess(args.d, args.pl, args.c, args.np, args.folds, verify=not args.no_verify,
                                    batch_size=args.bs)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"ERROR: {e}")
    print(f"plans: {plans}\ntrain with: nnUNetv2_train {args.d} {args.c[0]} FOLD -tr nnUNetTrainerUDA "
          f"-p {plans.stem}")


if __name__ == "__main__":
    main()
