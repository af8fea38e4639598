"""Compress one 8-bit RGB or grayscale image losslessly with Bit-Swap.

    python image_compress.py PHOTO.png [-o PHOTO.bsw] [--model demo] [--device auto]

Prints the sizes of the classical lossless codecs next to Bit-Swap's and
writes a .bsw container (utils/container.py); get the image back with
image_decompress.py.  The coding is in utils/imagecodec.py.  Exit status:
0 ok, 1 failure at run time (verification failed), 2 bad input.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from utils import cli  # noqa: E402


def parse_args(argv):
    ap = cli.parser("image_compress.py", __doc__.split("\n")[0])
    ap.add_argument("image", help="8-bit RGB or grayscale image (PNG, JPEG, ...)")
    ap.add_argument("-o", "--output", help="output container (default: IMAGE with suffix .bsw)")
    ap.add_argument("--model", default="demo",
                    help="model package folder or shipped name (see model/package.py)")
    cli.add_device_argument(ap)
    ap.add_argument("--force", action="store_true", help="overwrite an existing output file")
    ap.add_argument("--verify", action="store_true",
                    help="decode the container again before writing it and compare every pixel")
    ap.add_argument("--no-table", action="store_true", help="skip the baseline codecs")
    cli.add_progress_argument(ap)
    ap.add_argument("--quiet", action="store_true", help="print nothing (implies --no-progress)")
    return ap.parse_args(argv)


def table_rows(image, result, include_baselines=True):
    """(label, bits) rows: uncompressed, the paper's baselines, Bit-Swap."""
    from utils import codecs
    rows = [("Uncompressed", 8 * image.size)]
    if include_baselines:
        sizes = codecs.measure_image(image, codecs.PAPER_CODECS)
        rows += [(codecs.CODECS[name].label, bits) for name, bits in sizes.items()]
    rows.append(("Bit-Swap (file)", 8 * len(result.data)))
    return rows


def print_table(rows, dims, result, pixels):
    base = rows[0][1]
    print(f"{'codec':<18}{'bits':>12}{'bits/dim':>10}{'ratio':>8}   (bits/dim: per 8-bit sample "
          "of the image, height x width x channels)")
    for label, bits in rows:
        if bits is None:
            print(f"{label:<18}{'unavailable':>12}")
        else:
            print(f"{label:<18}{bits:>12d}{bits / dims:>10.3f}{base / bits:>8.2f}")
    if result.storage == "raw":
        print(f"Bit-Swap file = the raw pixels + {len(result.data) - dims} bytes of container: the "
              f"ANS message ({result.message_bytes} bytes) was not smaller than the {dims} raw bytes")
    else:
        print(f"Bit-Swap file = ANS message {result.message_bits} bits (incl. {result.initial_bits} "
              f"initial bits borrowed, {result.head_bits} bits of final heads of {result.lanes} lanes) "
              f"+ container header and checksum")
    for line in describe_blocks(result, pixels):
        print(line)


def describe_blocks(result, pixels):
    """What coded which pixels: the complete blocks by kind, then the strips
    of partial edge blocks (``pixels``: height x width of the image)."""
    bitswap = result.blocks - result.pixel_blocks - result.raw_blocks
    lines = [f"complete blocks: {result.blocks}: Bit-Swap {bitswap}, pixel model {result.pixel_blocks}, "
             f"raw {result.raw_blocks} (the last two where Bit-Swap would cost more than the raw bytes)"]
    if result.strip_pixels:
        how = "the pixel model" if result.strip_storage == "pixel" else "raw bytes"
        lines.append(f"partial edge blocks: {result.strip_pixels} pixels "
                     f"({100.0 * result.strip_pixels / pixels:.1f}% of the image), coded with {how}")
    return lines


def main(argv=None):
    args = parse_args(argv)
    out = args.output or os.path.splitext(args.image)[0] + ".bsw"

    def work():
        from utils import imagecodec, images
        from utils.device import device_from_args
        image, mode = images.load_image(args.image)
        cli.check_output_path(out, args.force, inputs=[args.image])
        model = imagecodec.load_codec_model(args.model, device_from_args(args))
        quiet = args.quiet or args.no_progress
        result = imagecodec.compress(image, mode, model, quiet=quiet)
        h, w, c = image.shape
        if args.verify:
            decoded, _ = imagecodec.decompress(result.data, model, quiet=quiet)
            if decoded.shape != image.shape or (decoded != image).any():
                raise cli.RunFailure("verification failed: the container does not decode to the image")
            verified = (f"verified: decoded the container again with model {model.name} on "
                        f"{model.device.type}: all {image.size} samples ({w}x{h}x{c}) identical, "
                        "pixel checksum matches")
        cli.write_atomic(out, result.data)
        if not args.quiet:
            print(f"{args.image}: {w}x{h} {mode}, model {model.name}")
            print_table(table_rows(image, result, not args.no_table), image.size, result,
                        image.shape[0] * image.shape[1])
            if args.verify:
                print(verified)
            print(f"wrote {out}")

    return cli.run_main("image_compress", work)


if __name__ == "__main__":
    sys.exit(main())
