"""Convert pretrained weights into a frontend's .weights.h5 file, once.

    python -m semseg_suite.weights convert model.safetensors --frontend ResNet18 --output resnet18.weights.h5
    python -m semseg_suite.weights convert timm:densenet161.tv_in1k --frontend DenseNet161 \
        --output densenet161.weights.h5
    python -m semseg_suite.weights convert ./resnet_18_imagenet --frontend ResNet18 --output resnet18.weights.h5
    python -m semseg_suite.weights convert keras-hub:resnet_18_imagenet --frontend ResNet18 --output resnet18.weights.h5

SOURCE is a timm/torchvision .safetensors state dict, a keras-hub ResNetBackbone
preset folder, or timm:NAME / keras-hub:PRESET to download first. Then train with
--frontend-weights FILE.
"""

from __future__ import annotations

import argparse
import sys

from frontends.base import FrontendWeightsError
from semseg_suite import cli, weights
from semseg_suite.weights.common import APPLICATIONS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m semseg_suite.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert SOURCE into a .weights.h5 file for --frontend")
    convert.add_argument("source", metavar="SOURCE",
                         help=".safetensors file, keras-hub preset folder, timm:NAME or keras-hub:PRESET")
    convert.add_argument("--frontend", required=True, choices=tuple(APPLICATIONS),
                         help="the frontend the file is for (timm: all; keras-hub: ResNet18, ResNet34)")
    convert.add_argument("--output", required=True, metavar="FILE", help="the file to write, ending in .weights.h5")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    cli.setup_logging()
    args = parse_args(argv)
    try:
        path = weights.convert(args.source, args.frontend, args.output)
    except (FrontendWeightsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.source} -> {path} (--frontend {args.frontend} --frontend-weights {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
