"""``lookalike serve``: its options and the command that serves the index."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .._options import add_model_options, add_store_option, model_options
from ..errors import ConfigurationError
from ..index import ImageSearchIndex
from ..protocols import TextEmbedder
from ..registry import open_index
from ..types import Text
from .app import build_app, run
from .limits import AUTH_ENV, DEFAULT_PORT, Limits, return_large_blocks
from .middleware import bind_warning, parse_auth
from .page import _import_gradio
from .service import SearchService


# -- the command ----------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    auth = parse_auth(args.auth if args.auth is not None else os.environ.get(AUTH_ENV))
    if not 1 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be between 1 and 65535, got {args.port}")
    in_flight = args.max_pixels_in_flight
    if in_flight is not None and not args.max_pixels <= in_flight:
        raise ConfigurationError(
            f"--max-pixels-in-flight ({in_flight:,}) must be at least --max-pixels ({args.max_pixels:,}): "
            "otherwise an image the server accepts could never be searched"
        )
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels, max_k=100,
        max_pixels_in_flight=in_flight or 0,
    )
    warning = bind_warning(args.host, auth)
    _import_gradio()  # fail early, before a model is loaded
    return_large_blocks()  # decoded images go back to the system when freed, not to a heap
    with open_index(args.store, args.embedder, **model_options(args)) as index:
        app = build_app(index, limits=limits, auth=auth, default_k=args.k)
        _warm_up(index)  # load the model now: the first visitor should not wait, nor see a load error
        if warning:
            print(f"lookalike: warning: {warning}", file=sys.stderr)
        host = f"[{args.host}]" if ":" in args.host else args.host
        info = SearchService(index).info()
        print(
            f"lookalike: serving {info['count']} images (model {info['embedder']}) at "
            f"http://{host}:{args.port}/ (JSON API at /api/search); Ctrl+C stops",
            flush=True,
        )
        run(app, args.host, args.port)
    return 0


def _warm_up(index: ImageSearchIndex) -> None:
    from PIL import Image

    index.embed_queries([Image.new("RGB", (64, 64), (128, 128, 128))])
    if isinstance(index.embedder, TextEmbedder):  # the tokenizer too (a CLIP model)
        index.embed_queries([Text("a photo")])


def add_command(subparsers: Any) -> None:
    """Register ``lookalike serve`` (listed in :data:`lookalike.cli.COMMANDS`)."""
    p = subparsers.add_parser(
        "serve", help="a web page (and JSON API) to search the index by image",
        description="Serve a search page over the index (needs the [ui] extra: pip install 'lookalike[ui]'). "
        f"Binds to 127.0.0.1 unless --host says otherwise; set ${AUTH_ENV}=USER:PASSWORD "
        "(or --auth) before binding to other machines.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("-k", type=int, default=10, help="results shown at first (default 10)")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help=f"require HTTP basic auth (default: ${AUTH_ENV}; the variable keeps it out of ps)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="largest image in pixels (default 50,000,000)")
    p.add_argument("--max-pixels-in-flight", type=int, default=None, metavar="PIXELS",
                   help="most decoded pixels held by all requests at once; others wait their turn "
                   "(default: twice --max-pixels)")
    add_store_option(p)
    add_model_options(p, spelling="--onnx")
    p.set_defaults(func=cmd_serve)
