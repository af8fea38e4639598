"""Decompress a .bsw container written by image_compress.py back to a PNG
identical pixel for pixel to the original.

    python image_decompress.py PHOTO.bsw [-o RESTORED.png] [--model demo] [--device auto]

The decoded pixels are checked against the checksum stored in the container
before anything is written.  The coding is in utils/imagecodec.py.  Exit
status: 0 ok, 1 the decoded pixels do not match, 2 bad input.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from utils import cli  # noqa: E402


def parse_args(argv):
    ap = cli.parser("image_decompress.py", __doc__.split("\n")[0])
    ap.add_argument("container", help="a .bsw file written by image_compress.py")
    ap.add_argument("-o", "--output", help="output PNG (default: CONTAINER with suffix .decoded.png)")
    ap.add_argument("--model", default="demo",
                    help="model package folder or shipped name (see model/package.py)")
    cli.add_device_argument(ap, default="file",
                            note="; file: the device type the file was coded on")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output file")
    cli.add_progress_argument(ap)
    ap.add_argument("--quiet", action="store_true", help="print nothing (implies --no-progress)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = args.output or os.path.splitext(args.container)[0] + ".decoded.png"

    def work():
        from utils import container, imagecodec, images
        from utils.device import resolve_device
        data = cli.read_bytes(args.container, "Bit-Swap file")
        header, _ = container.unpack(data)      # fail fast on a bad file
        cli.check_output_path(out, args.force, inputs=[args.container])
        # default: the device type the file was coded on
        device = header["device"] if args.device == "file" and args.gpu is None else args.device
        model = imagecodec.load_codec_model(args.model, resolve_device(
            "auto" if device == "file" else device, args.gpu))
        image, mode = imagecodec.decompress(data, model, quiet=args.quiet or args.no_progress)
        cli.write_atomic(out, images.png_bytes(image, mode))
        if not args.quiet:
            print(f"{args.container}: {image.shape[1]}x{image.shape[0]} {mode}, checksum verified; wrote {out}")

    return cli.run_main("image_decompress", work)


if __name__ == "__main__":
    sys.exit(main())
