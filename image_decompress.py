"""Decompress a .bsw container written by image_compress.py back to a PNG
identical pixel for pixel to the original.

    python image_decompress.py PHOTO.bsw [-o RESTORED.png] [--model demo] [--device auto]

The decoded pixels are checked against the checksum stored in the container
before anything is written.  By default the networks run on the device class
the file was coded on (recorded in the container); --device picks another.
The coding is in utils/imagecodec.py.  Exit
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


def decode_device(args, header):
    """The device class the file was coded on unless --device/--gpu say
    otherwise (the tables are portable; another class is said in one line)."""
    import torch
    from utils.device import resolve_device
    coded = header["device"]
    if args.device == "file" and args.gpu is None:
        if coded == "cuda" and not torch.cuda.is_available():
            raise cli.BadInput("this file was coded on cuda, which is not available here; "
                               "pass --device cpu to decode it on the CPU")
        return resolve_device(coded)
    device = resolve_device("auto" if args.device == "file" else args.device, args.gpu)
    if device.type != coded:
        print(f"image_decompress: note: this file was coded on {coded}, decoding on {device.type}",
              file=sys.stderr)
    return device


def main(argv=None):
    args = parse_args(argv)
    out = args.output or os.path.splitext(args.container)[0] + ".decoded.png"

    def work():
        from utils import container, imagecodec, images
        data = cli.read_bytes(args.container, "Bit-Swap file")
        header, _ = container.unpack(data)      # fail fast on a bad file
        cli.check_output_path(out, args.force, inputs=[args.container])
        model = None
        if header["storage"] != "raw":          # raw pixels need no model
            model = imagecodec.load_codec_model(args.model, decode_device(args, header))
        image, mode = imagecodec.decompress(data, model, quiet=args.quiet or args.no_progress)
        cli.write_atomic(out, images.png_bytes(image, mode))
        if not args.quiet:
            how = "stored raw" if model is None else f"model {model.name} on {model.device.type}"
            print(f"{args.container}: {image.shape[1]}x{image.shape[0]} {mode} ({how}), "
                  f"pixel checksum verified; wrote {out}")

    return cli.run_main("image_decompress", work)


if __name__ == "__main__":
    sys.exit(main())
