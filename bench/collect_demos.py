"""Time to collect scripted-expert demonstrations (default: 10 per task x MT10, corner2 video 64 px).

    PYTHONPATH=. python bench/collect_demos.py --out data/mt10_10demos
"""

from __future__ import annotations

import argparse
import shutil

from _common import run_main, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="MT10")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--camera", default="corner2", help="'none' for a state-only dataset")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--out", default="data/mt10_10demos")
    args = ap.parse_args()
    from pirl.data.collect import CollectConfig, collect

    shutil.rmtree(args.out, ignore_errors=True)
    camera = None if args.camera == "none" else args.camera
    rep = collect(CollectConfig(tasks=args.tasks, episodes_per_task=args.episodes, camera=camera, image_size=args.size, num_envs=args.num_envs), args.out)
    payload = {"episodes": rep.episodes, "frames": rep.frames, "seconds": rep.seconds, "frames_per_s": rep.frames / rep.seconds,
               "attempts": rep.attempts, "expert_success_rate": rep.expert_success_rate, "camera": camera, "size": args.size}  # fmt: skip
    md = (f"{rep.episodes} episodes ({args.episodes}/task, {args.tasks}), {rep.frames} frames, camera {camera} {args.size}px: "
          f"**{rep.seconds:.1f} s** ({rep.frames / rep.seconds:.0f} frames/s, dataset written incl. video encoding). "
          f"Expert success: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in rep.expert_success_rate.items()))  # fmt: skip
    suffix = "" if camera else "_state"
    write_results(f"collect_demos{suffix}", payload, md)


if __name__ == "__main__":
    run_main(main)
