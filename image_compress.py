"""Compress one 8-bit RGB or grayscale image losslessly with Bit-Swap.

    python image_compress.py PHOTO.png [-o PHOTO.bsw] [--model DIR] [--device auto]

Prints the sizes of the classical lossless codecs next to Bit-Swap's and
writes a .bsw container (utils/container.py); get the image back with
image_decompress.py.  All the work is in utils/imagecodec.py.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from utils import imagecodec  # noqa: E402


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image", help="8-bit RGB or grayscale image (PNG, JPEG, ...)")
    ap.add_argument("-o", "--output", help="output container (default: IMAGE with suffix .bsw)")
    ap.add_argument("--model", help="model directory or model.json (default: the shipped demo model)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output file")
    ap.add_argument("--verify", action="store_true", help="decode the result again before writing it")
    ap.add_argument("--no-table", action="store_true", help="skip the baseline codecs")
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no table")
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


def print_table(rows, dims, result):
    base = rows[0][1]
    print(f"{'codec':<18}{'bits':>12}{'bits/dim':>10}{'ratio':>8}")
    for label, bits in rows:
        if bits is None:
            print(f"{label:<18}{'unavailable':>12}")
        else:
            print(f"{label:<18}{bits:>12d}{bits / dims:>10.3f}{base / bits:>8.2f}")
    print(f"Bit-Swap file = ANS message {result.message_bits} bits (incl. {result.initial_bits} "
          f"initial bits borrowed by the first block, {result.head_bits} bits of final lane heads) "
          f"+ container header; {result.blocks} blocks of 32x32")


def main(argv=None):
    args = parse_args(argv)
    out = args.output or os.path.splitext(args.image)[0] + ".bsw"

    def work():
        image, mode = imagecodec.load_image(args.image)
        imagecodec.check_output_path(out, args.force)
        model = imagecodec.load_model(args.model, imagecodec.pick_device(args.device))
        result = imagecodec.compress(image, mode, model, quiet=args.quiet)
        if args.verify:
            decoded, _ = imagecodec.decompress(result.data, model, quiet=args.quiet)
            if decoded.shape != image.shape or (decoded != image).any():
                raise imagecodec.DemoError("verification failed: the container does not decode to the image")
        imagecodec.write_atomic(out, result.data)
        if not args.quiet:
            h, w, c = image.shape
            print(f"{args.image}: {w}x{h} {mode}, model {model.name}")
            print_table(table_rows(image, result, not args.no_table), image.size, result)
            print(f"wrote {out}")

    return imagecodec.run_cli("image_compress", work)


if __name__ == "__main__":
    sys.exit(main())
