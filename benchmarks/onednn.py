"""Training and inference throughput with TensorFlow's oneDNN CPU path on and off.

    python benchmarks/onednn.py
    python benchmarks/onednn.py --models LinkNet:ResNet18 ENet --rounds 3
    python benchmarks/onednn.py --max-isa AVX2     # oneDNN limited to AVX2, as on a CPU without AVX-512

``TF_ENABLE_ONEDNN_OPTS`` is read once, when TensorFlow starts, so each measurement
is a child process (this file with ``--child``) under one setting: it builds the
model as train.py does (``train_speed.build_variant``: the suite's training step,
auxiliary heads, Adam, float32), warms it up and times training and inference steps
in alternation (``train_speed.alternate``). For every model, the children with
oneDNN on and off run one after the other, ``--rounds`` times, in the order on/off
then off/on, so that load drifts touch both alike; each cell is the median over its
rounds. Prints a Markdown table with the ratio of on to off.

``--max-isa`` sets ``ONEDNN_MAX_CPU_ISA`` in the oneDNN children (oneDNN's own
switch, e.g. ``AVX2``): on a CPU with AVX-512 it measures what oneDNN does with only
the instructions of an AVX2 CPU. The oneDNN-off path is Eigen's, whose kernels this
TensorFlow wheel compiles for AVX2 whatever the CPU. It is an emulation, not a
machine without AVX-512 (cache sizes and clock are the host's); say so beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("DeepLabV3_plus:MobileNetV2", "DeepLabV3_plus:ResNet50", "LinkNet:ResNet18", "BiSeNet:ResNet18",
                  "ENet")
SETTINGS = {"on": "1", "off": "0"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL[:FRONTEND]")
    parser.add_argument("--crop", type=int, default=256, help="square input size (default: 256)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    parser.add_argument("--num-classes", type=int, default=12)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per child (default: 6)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per child first (default: 2)")
    parser.add_argument("--rounds", type=int, default=1, help="children per model and setting (default: 1)")
    parser.add_argument("--max-isa", default=None,
                        help="ONEDNN_MAX_CPU_ISA for the oneDNN-on children (e.g. AVX2; default: the CPU's)")
    parser.add_argument("--child", metavar="MODEL[:FRONTEND]", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def split_spec(spec: str) -> tuple[str, str | None]:
    name, _, frontend = spec.partition(":")
    return name, frontend or None


def child(args) -> int:
    """Measures one model in this process (under the caller's oneDNN setting); prints JSON."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks import train_speed
    from semseg_suite import layers

    name, frontend = split_spec(args.child)
    batch = train_speed.random_batch(args.batch, args.crop, args.num_classes)
    variant = train_speed.build_variant(name, frontend, "float32", num_classes=args.num_classes)
    seconds = train_speed.alternate({"train": lambda: variant.train_step(batch),
                                     "infer": lambda: variant.infer(batch[0])}, args.steps, args.warmup)
    print(json.dumps({"onednn": layers.onednn_enabled(), **{k: args.batch / v for k, v in seconds.items()}}))
    return 0


def run_child(spec: str, setting: str, args) -> dict:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=SETTINGS[setting], TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if args.max_isa and setting == "on":
        env["ONEDNN_MAX_CPU_ISA"] = args.max_isa
    command = [sys.executable, __file__, "--child", spec, "--crop", str(args.crop), "--batch", str(args.batch),
               "--num-classes", str(args.num_classes), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{spec} with oneDNN {setting} failed:\n{result.stderr[-3000:]}")
    speeds = json.loads(result.stdout.strip().splitlines()[-1])
    if speeds.pop("onednn") != (setting == "on"):
        raise RuntimeError(f"{spec}: TF_ENABLE_ONEDNN_OPTS={SETTINGS[setting]} did not turn oneDNN {setting}")
    return speeds


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    sys.path.insert(0, str(ROOT))
    from benchmarks import peak

    print("\n".join(peak.header_lines(peak.command_line(__file__, argv))))
    print(f"float32, crop {args.crop}x{args.crop}, batch {args.batch}; per child the median of {args.steps} "
          f"alternating train/inference steps after {args.warmup} warm-up; median over {args.rounds} "
          f"round(s) of one child per setting; oneDNN ISA limit: {args.max_isa or 'none (the CPU' + chr(39) + 's)'}")
    print()
    print("| model | frontend | train img/s, oneDNN on | off | on vs off | inference img/s, on | off | on vs off |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for spec in args.models:
        runs = {"on": [], "off": []}
        for round_ in range(args.rounds):
            for setting in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                runs[setting].append(run_child(spec, setting, args))
        cell = {(s, k): statistics.median(r[k] for r in runs[s]) for s in runs for k in ("train", "infer")}
        name, frontend = split_spec(spec)
        print(f"| {name} | {frontend or 'own encoder'} | {cell['on', 'train']:.2f} | {cell['off', 'train']:.2f} | "
              f"{cell['on', 'train'] / cell['off', 'train']:.2f}x | {cell['on', 'infer']:.2f} | "
              f"{cell['off', 'infer']:.2f} | {cell['on', 'infer'] / cell['off', 'infer']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
