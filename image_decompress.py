"""Decompress a .bsw container written by image_compress.py back to a PNG
identical pixel for pixel to the original.

    python image_decompress.py PHOTO.bsw [-o RESTORED.png] [--model DIR] [--device auto]

The decoded pixels are checked against the checksum stored in the container
before anything is written.  All the work is in utils/imagecodec.py.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from utils import imagecodec  # noqa: E402


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("container", help="a .bsw file written by image_compress.py")
    ap.add_argument("-o", "--output", help="output PNG (default: CONTAINER with suffix .decoded.png)")
    ap.add_argument("--model", help="model directory or model.json (default: the shipped demo model)")
    ap.add_argument("--device", default="auto",
                    help="cpu, cuda, cuda:N or auto (default: the device type the file was coded on)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output file")
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = args.output or os.path.splitext(args.container)[0] + ".decoded.png"

    def work():
        data = imagecodec.read_file(args.container)
        header, _ = imagecodec.container.unpack(data)      # fail fast on a bad file
        imagecodec.check_output_path(out, args.force)
        device = header["device"] if args.device == "auto" else args.device
        model = imagecodec.load_model(args.model, imagecodec.pick_device(device))
        image, mode = imagecodec.decompress(data, model, quiet=args.quiet)
        imagecodec.write_atomic(out, imagecodec.png_bytes(image, mode))
        if not args.quiet:
            print(f"{args.container}: {image.shape[1]}x{image.shape[0]} {mode}, checksum verified; wrote {out}")

    return imagecodec.run_cli("image_decompress", work)


if __name__ == "__main__":
    sys.exit(main())
