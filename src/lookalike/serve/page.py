"""The Gradio page: drop, paste, upload or photograph an image (or, with a CLIP model, type
what it shows), see the most similar stored ones."""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..duplicates_ui import add_duplicates_panel
from ..errors import ImageSearchError, MissingDependencyError, NotFoundError
from ..types import HASH_FIELD, Hit
from .limits import _NOT_A_PATH, Rejected
from .middleware import UploadJanitor
from .service import SearchService, _size, hit_dict

if TYPE_CHECKING:
    from PIL import Image


# -- the page -----------------------------------------------------------------------------------
def _import_gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "gradio":
            raise MissingDependencyError("gradio", "ui", "lookalike serve") from exc
        raise
    return gradio


def _caption(hit: Hit) -> str:
    name = Path(hit.path).name if hit.path else hit.id[:12]
    label = hit.metadata.get("label")
    return f"{hit.score:.3f} · {label} · {name}" if label not in (None, "") else f"{hit.score:.3f} · {name}"


def _placeholder(size: int = 256) -> Image.Image:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (229, 231, 235))
    ImageDraw.Draw(image).text((size // 2 - 40, size // 2 - 6), "file not available", fill=(75, 85, 99))
    return image


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _md_escape(text: object) -> str:
    out = str(text)
    for ch in "\\`*_{}[]<>()#+-!|":
        out = out.replace(ch, "\\" + ch)
    return out


# Captions carry score, label and file name: let them wrap instead of being cut off.
_CSS = "#gallery .caption-label { white-space: normal; overflow-wrap: anywhere; text-overflow: clip; }"


def _build_blocks(gr: Any, service: SearchService, default_k: int) -> Any:
    any_label = "(any label)"
    labels = service.labels()
    has_labels = service.label_field in service.filter_fields()
    upload_root = Path(gr.utils.get_upload_folder()).resolve()
    uploads = UploadJanitor(upload_root)

    def header() -> str:
        info = service.info()
        model = info["embedder"] or "none yet"
        return (
            f"## lookalike: search by image\n"
            f"**{info['count']:,}** images in the index · model `{model}` · store {info['store']}"
        )

    def label_filter(label: str | None) -> dict[str, Any] | None:
        if not label or label == any_label:
            return None
        return {service.label_field: label}

    def read_upload(payload: Any) -> bytes:
        """The bytes of an image the browser uploaded (never a path it names)."""
        if not isinstance(payload, Mapping):
            raise gr.Error("Upload an image first: drop, paste or choose one, or use the webcam.")
        url = payload.get("url") or ""
        if payload.get("path") is None and isinstance(url, str) and url.startswith("data:"):
            if len(url) > service.limits.max_upload_bytes * 4 // 3 + 1024:
                raise gr.Error(f"The image is larger than the limit of {_size(service.limits.max_upload_bytes)}.")
            try:
                return base64.b64decode(url.partition(",")[2], validate=True)
            except (binascii.Error, ValueError):
                raise gr.Error("Could not read the uploaded image: bad data URL.") from None
        path = Path(str(payload.get("path"))).resolve()
        if not path.is_relative_to(upload_root):  # defence in depth: Gradio checks too
            raise gr.Error(_sentence(_NOT_A_PATH))
        if not path.is_file():
            raise gr.Error("The uploaded image is no longer on the server: upload it again.")
        try:
            if path.stat().st_size > service.limits.max_upload_bytes:
                raise gr.Error(f"The image is larger than the limit of {_size(service.limits.max_upload_bytes)}.")
            return path.read_bytes()
        finally:
            uploads.consumed(path)  # the search keeps the query's vector, never the file

    def show(hits: list[Hit], seconds: float, what: str) -> tuple[Any, str, list[dict[str, Any]]]:
        items = []
        for hit in hits:
            thumb = None
            try:
                thumb = service.stored_image(hit.id, 256)
            except (NotFoundError, Rejected):  # gone, or the server stayed busy: a placeholder
                pass
            items.append((thumb or _placeholder(), _caption(hit)))
        status = f"{len(hits)} results for {what} in {seconds:.2f} s" if hits else f"No results for {what}."
        return items, status, [hit_dict(h) for h in hits]

    def run_guarded(work: Callable[[], list[Hit]], what: str) -> tuple[Any, str, list[dict[str, Any]]]:
        start = time.perf_counter()
        try:
            hits = work()
        except NotFoundError:
            message = "That image is no longer in the index."
        except ImageSearchError as exc:  # Rejected (bad upload, bad k or filter), store errors
            message = _sentence(str(exc))
        else:
            return show(hits, time.perf_counter() - start, what)
        gr.Warning(message)
        return [], f"**{_md_escape(message)}**", []

    def search_upload(payload: Any, k: Any, label: Any) -> tuple[Any, ...]:
        data = read_upload(payload)
        vectors: list[Any] = []

        def work() -> list[Hit]:
            service.check_k(k)
            service.check_filter(label_filter(label))  # cheap checks before the decode
            vectors.append(service.embed_upload(data))
            return service.search(vectors[0], k, label_filter(label))

        gallery, status, hits = run_guarded(work, "the uploaded image")
        vector = vectors[0].tolist() if vectors else None  # re-searches (k, label) reuse it
        return gallery, status, hits, None, vector, gr.update(visible=False)

    def clear_text() -> str:
        return ""  # an uploaded image (or a chosen result) is the query now

    def search_text(text: Any, k: Any, label: Any) -> tuple[Any, ...]:
        vectors: list[Any] = []

        def work() -> list[Hit]:
            service.check_k(k)
            service.check_filter(label_filter(label))
            vectors.append(service.embed_text(text))
            return service.search(vectors[0], k, label_filter(label))

        shown = str(text or "").strip()
        what = f"“{shown[:60]}{'…' if len(shown) > 60 else ''}”"
        gallery, status, hits = run_guarded(work, what)
        vector = vectors[0].tolist() if vectors else None  # re-searches (k, label) reuse it
        return gallery, status, hits, None, vector, gr.update(visible=False), None

    def search_button(payload: Any, k: Any, label: Any, query_id: Any, query_vec: Any, text: Any) -> tuple[Any, ...]:
        if isinstance(text, str) and text.strip():  # typed last: an upload or a chosen result empties it
            return search_text(text, k, label)
        return (*search_current(payload, k, label, query_id, query_vec), gr.skip())

    def search_current(payload: Any, k: Any, label: Any, query_id: Any, query_vec: Any) -> tuple[Any, ...]:
        if query_id:
            gallery, status, hits = run_guarded(
                lambda: service.search_similar(str(query_id), k, label_filter(label)), "the chosen result"
            )
            return gallery, status, hits, query_id, gr.skip(), gr.skip()
        if query_vec:
            import numpy as np

            vector = np.asarray(query_vec, dtype=np.float32)
            gallery, status, hits = run_guarded(
                lambda: service.search(vector, k, label_filter(label)), "the uploaded image"
            )
            return gallery, status, hits, None, gr.skip(), gr.skip()
        if payload is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return search_upload(payload, k, label)

    def select(hits: list[dict[str, Any]], evt: Any) -> tuple[Any, ...]:
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not hits or not 0 <= index < len(hits):
            return gr.skip(), gr.skip(), None, gr.update(visible=False)
        hit = hits[index]
        try:
            image = service.stored_image(hit["id"], 1024)
        except NotFoundError:
            raise gr.Error("That image is no longer in the index.") from None
        except Rejected:  # the server stayed busy with large images: the details, without the picture
            image = None
        meta = {k: v for k, v in hit["metadata"].items() if k != HASH_FIELD}
        lines = [
            f"### {_md_escape(Path(hit['path']).name if hit['path'] else hit['id'])}",
            f"score **{hit['score']:.4f}**",
            *(f"{_md_escape(key)}: **{_md_escape(value)}**" for key, value in meta.items()),
            f"id `{hit['id']}`",
        ]
        return image or _placeholder(512), "  \n".join(lines), hit["id"], gr.update(visible=True)

    # Gradio finds the event-data parameter by its (evaluated) annotation.
    select.__annotations__ = {"hits": list, "evt": gr.SelectData, "return": tuple}

    def search_by(selected: Any, k: Any, label: Any) -> tuple[Any, ...]:
        if not selected:
            raise gr.Error("Click a result first.")
        gallery, status, hits = run_guarded(
            lambda: service.search_similar(str(selected), k, label_filter(label)), "the chosen result"
        )
        try:
            query_image = service.stored_image(str(selected), 1024)
        except (NotFoundError, Rejected):
            query_image = None
        return gallery, status, hits, selected, None, query_image or gr.skip()

    def clear() -> tuple[Any, ...]:
        return [], "", [], None, None, gr.update(visible=False)

    # Uploads are deleted once searched (UploadJanitor); this sweep catches the ones never searched,
    # and the thumbnails the page showed.
    with gr.Blocks(title="lookalike", analytics_enabled=False, delete_cache=(600, 1800)) as demo:
        info_md = gr.Markdown(elem_id="info")
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                query = gr.Image(
                    label="Query image: drop, paste or upload (or use the webcam)",
                    sources=["upload", "clipboard", "webcam"],
                    type="filepath",
                    height=320,
                    elem_id="query",
                )
                text = gr.Textbox(
                    label="…or describe it in words (Enter searches)", placeholder="a red car on a beach",
                    max_lines=1, max_length=service.limits.max_text_chars, visible=service.has_text,
                    elem_id="text",
                )
                k = gr.Slider(1, min(50, service.limits.max_k), value=default_k, step=1, label="Results (k)",
                              elem_id="k")
                label = gr.Dropdown(
                    [any_label, *labels], value=any_label, label="Label filter", allow_custom_value=True,
                    visible=has_labels, elem_id="label",
                )
                run = gr.Button("Search", variant="primary", elem_id="run")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=3):
                gallery = gr.Gallery(
                    label="Most similar (click one to see it large)", columns=4, height="auto",
                    object_fit="contain", allow_preview=False, interactive=False, elem_id="gallery",
                )
                with gr.Row(visible=False, elem_id="detail") as detail:
                    big = gr.Image(label="Selected result", type="pil", interactive=False, height=360,
                                   elem_id="selected")
                    with gr.Column():
                        details = gr.Markdown(elem_id="details")
                        again = gr.Button("Search by this image", elem_id="search-by")
        hits_state = gr.State([])
        query_id = gr.State(None)
        query_vec = gr.State(None)  # the uploaded query's vector: its file is deleted once read
        selected_id = gr.State(None)

        outputs = [gallery, status, hits_state, query_id, query_vec]
        demo.load(header, None, info_md, api_name=False)
        query.upload(search_upload, [query, k, label], [*outputs, detail], preprocess=False,
                     api_name="search")
        query.upload(clear_text, None, text, api_name=False)
        text.submit(search_text, [text, k, label], [*outputs, detail, query], api_name="search_text")
        current = [query, k, label, query_id, query_vec]
        run.click(search_button, [*current, text], [*outputs, detail, query], preprocess=False, api_name=False)
        k.release(search_current, current, [*outputs, detail], preprocess=False, api_name=False)
        label.input(search_current, current, [*outputs, detail], preprocess=False, api_name=False)
        query.clear(clear, None, [*outputs, detail], api_name=False)
        gallery.select(select, [hits_state], [big, details, selected_id, detail], api_name=False)
        again.click(search_by, [selected_id, k, label], [*outputs, query], api_name=False)
        again.click(clear_text, None, text, api_name=False)  # the chosen result is the query now
        add_duplicates_panel(gr, service)
    return demo
