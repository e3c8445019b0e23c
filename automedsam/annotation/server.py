"""The annotation page's HTTP server: a FastAPI app over one AnnotationSession, served by uvicorn on 127.0.0.1.

Every request names a sample of the session's queue (anything else is 404, so no path reaches outside the dataset),
bodies are size-limited and schema-checked, and box errors come back as 422 with the message an imported box file
would get; nothing is written then. A save made against boxes that changed meanwhile (another tab) is answered 409
with the current boxes, which the page merges and saves again, and whether the sample was marked No structure
meanwhile, which the page never saves over unasked. Train runs the annotation guide's next steps in the background
(annotation/retraining.py); while it runs, boxes cannot be changed (423), since planning reads them. A page left open
on a dataset or mode this server run does not serve (another dataset on the same port, a restart in another mode) is
answered 409 with what to do, since its requests name only sample ids (_ServedPages).

Other accounts of a shared machine reach 127.0.0.1 too: every /api/ request needs this server run's token (_Token),
which the page holds in a cookie; every answer forbids framing (clickjacking) and MIME sniffing (SECURITY_HEADERS).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import shutil
import socket
import tempfile
import threading
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.background import BackgroundTask
from starlette.datastructures import MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from automedsam.annotation.box_store import VersionConflict
from automedsam.annotation.retraining import (TrainingSettings, no_boxes_blocker, review_steps, training_blocker,
                                              training_steps, unboxed_blocker)
from automedsam.annotation.segmenting import (agreement_file, segmentation_files, segmentation_steps,
                                              segmentations_out_of_date)
from automedsam.annotation.session import AnnotationSession, MarkedNoStructure, UnknownSample
from automedsam.annotation.training_job import Step, TrainingJob
from automedsam.errors import AutomedsamError
from automedsam.inference.model_folder import locate_model_folder, open_model_folder
from automedsam.model_sharing.export import PAGE_WORDING, export_model, shared_dataset_name

STATIC = Path(str(resources.files("automedsam.annotation") / "static"))
MAX_BODY_BYTES = 64 * 1024  # a sample's boxes are a few hundred bytes; anything near this is not a box list
MAX_BOXES = 256
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]
EVERY_INTERFACE = ("0.0.0.0", "::")
TRAINING_LOG = "page_training.log"  # in the preprocessed dataset folder
PAGE_HEADER = "X-Automedsam-Page"
SESSION_HEADER = "X-Automedsam-Session"  # which dataset and mode the page was opened on: _ServedPages
TOKEN_HEADER = "X-Automedsam-Token"  # the server run's token, as a script sends it (the page has its cookie)
STATIC_PATH = "/static/"  # the page's files, public as the page itself (which checks the token): no data in them
NOT_AUTHORISED = ("Not authorised: open the address that automedsam_annotate printed in its terminal (it ends with "
                  "?token=...; each start prints a new one). A page left open while automedsam_annotate restarted "
                  "works again, its unsaved boxes included, once that address is open in another tab.")
OPEN_THE_PRINTED_ADDRESS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>automedsam_annotate</title><link rel="icon" href="data:,"></head>
<body><p>This page opens from the address that automedsam_annotate printed in its terminal, which ends with
<code>?token=...</code> (each start of automedsam_annotate prints a new one): open that address.</p></body></html>
"""
# Sent with every answer: no other site may show the page in a frame (where a click on it could be stolen), nor load
# anything but the server's own files into it; the favicon is a data: URL
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}
# The element types of array answers (their X-Dtype: annotate.js's ARRAY_TYPES), each sent little-endian whatever
# this machine's byte order.
SENT_DTYPES = {"uint8": "u1", "uint16": "<u2", "float32": "<f4"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BoxEntry(_Strict):
    label: StrictInt
    box: list[StrictInt] = Field(min_length=4, max_length=4)


class SaveRequest(_Strict):
    version: StrictStr = Field(max_length=64)
    boxes: list[BoxEntry] = Field(max_length=MAX_BOXES)


class RejectRequest(_Strict):  # No structure, and Restore taking it back
    version: StrictStr = Field(max_length=64)


class SegmentRequest(_Strict):
    box: list[StrictInt] = Field(min_length=4, max_length=4)


class ProposeRequest(_Strict):
    point: list[StrictInt] = Field(min_length=2, max_length=2)


def create_app(session: AnnotationSession, *, allowed_hosts: Optional[list[str]] = None,
               training: TrainingSettings = TrainingSettings()) -> FastAPI:
    """The app; `allowed_hosts` (default: loopback names) guards against DNS rebinding from a web page. Its training
    job is `app.state.training_job` (stop it when the server ends); its token, which opens the page (page_url), is
    `app.state.token`."""
    served = _ServedPages(session)
    token = _Token()
    app = FastAPI(title="automedsam_annotate", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(_require_the_page), Depends(served.require)])
    job = app.state.training_job = TrainingJob(session.preprocessed_dir / TRAINING_LOG)
    app.state.token = token.value
    packing = threading.Lock()  # a download being packed, which a run starting then could move or rewrite under it
    # the last added runs first: the security headers go on every answer, refusals included
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(_TokenGuard, token=token)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOOPBACK_HOSTS)
    app.add_middleware(_SecurityHeaders)

    @app.exception_handler(UnknownSample)
    async def unknown_sample(request: Request, error: UnknownSample) -> JSONResponse:
        # `unknown_sample`: the page lets N and P leave a sample whose boxes can no longer be saved
        return JSONResponse({"detail": f"unknown sample {error.args[0]!r}: not in this session's queue",
                             "unknown_sample": error.args[0]}, 404)

    @app.exception_handler(OpenedElsewhere)
    async def opened_elsewhere(request: Request, error: OpenedElsewhere) -> JSONResponse:
        return JSONResponse({"detail": str(error), "reload": True}, 409)

    @app.exception_handler(MarkedNoStructure)
    def marked_no_structure(request: Request, error: MarkedNoStructure) -> JSONResponse:
        # `marked_no_structure`: the page takes the sample as the server holds it (marked, at `version`, with the
        # queue as it is now) instead of staying unsaved, so that N, P and the queue move on
        return JSONResponse({"detail": str(error), "marked_no_structure": error.sample_id, "version": error.version,
                             **_progress(session)}, 422)

    @app.exception_handler(AutomedsamError)
    async def bad_input(request: Request, error: AutomedsamError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 422)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's own answer quotes each refused value, which JSON cannot hold when it is NaN or an infinity
        (1e400 in a body): a 500. The page shows the messages alone."""
        problems = [{key: value for key, value in problem.items() if key != "input"} for problem in error.errors()]
        return JSONResponse({"detail": jsonable_encoder(problems)}, 422)

    @app.exception_handler(VersionConflict)
    async def conflict(request: Request, error: VersionConflict) -> JSONResponse:
        # `rejected`: marked No structure meanwhile, a decision the page does not merge its boxes into unasked
        rejected = request.path_params.get("sample_id") in session.splits["interactive"]["rejected"]
        return JSONResponse({"detail": "these boxes changed in another tab or window; merged, save again",
                             "boxes": error.boxes, "version": error.version, "rejected": rejected}, 409)

    @app.get("/", include_in_schema=False)
    def page(request: Request, token_sent: Optional[str] = Query(None, alias="token")) -> Response:
        """The page, for the printed address (whose token goes into a cookie, HttpOnly: the page's script never
        reads it) or a browser holding the cookie; anyone else is told to open the printed address."""
        if token.matches(token_sent):
            response = FileResponse(STATIC / "index.html")
            response.set_cookie(_cookie_name(request), token.value, httponly=True, samesite="strict", path="/")
            return response
        if token.admits(request):
            return FileResponse(STATIC / "index.html")
        return HTMLResponse(OPEN_THE_PRINTED_ADDRESS, 403)

    @app.get("/api/session")
    def overview() -> dict[str, Any]:
        return {**session.overview(), "session_id": served.current()}

    @app.get("/api/samples/{sample_id}")
    def sample(sample_id: str) -> dict[str, Any]:
        return session.sample(sample_id)

    @app.get("/api/samples/{sample_id}/pixels")
    def pixels(sample_id: str, slice: Optional[int] = None) -> Response:
        return _array_response(session.pixels(sample_id, slice))

    @app.get("/api/samples/{sample_id}/prediction")
    def prediction(sample_id: str) -> Response:
        label_map = session.prediction(sample_id)
        if label_map is None:
            raise HTTPException(404, f"{sample_id} has no prediction: predictions are shown in --review only")
        return _array_response(label_map)

    @app.put("/api/samples/{sample_id}/boxes")
    def save(sample_id: str, request: SaveRequest) -> dict[str, Any]:
        _refuse_while_training(job)
        version = session.save(sample_id, [entry.model_dump() for entry in request.boxes], version=request.version)
        return {"version": version, **_progress(session)}

    @app.post("/api/samples/{sample_id}/reject")
    def reject(sample_id: str, request: RejectRequest) -> dict[str, Any]:
        _refuse_while_training(job)
        return {"version": session.reject(sample_id, version=request.version), **_progress(session)}

    @app.post("/api/samples/{sample_id}/restore")
    def restore(sample_id: str, request: RejectRequest) -> dict[str, Any]:
        _refuse_while_training(job)
        return {"version": session.restore(sample_id, version=request.version), **_progress(session)}

    @app.post("/api/samples/{sample_id}/segment")
    def segment(sample_id: str, request: SegmentRequest) -> Response:
        return _array_response(session.segment(sample_id, list(request.box)).astype(np.uint8))

    @app.post("/api/samples/{sample_id}/propose")
    def propose(sample_id: str, request: ProposeRequest) -> dict[str, Any]:
        return {"boxes": session.propose(sample_id, list(request.point))}

    @app.get("/api/training")
    def training_status() -> dict[str, Any]:
        running = job.running
        model_dir = None if running else _trained_model(session, training)
        segmentations = 0 if running else len(segmentation_files(session))
        blocker, review_blocker, problem = (None, None, None) if running else _blocker_state(session)
        compared = _segmentations_state(session, model_dir, segmentations=segmentations, device=training.device)
        return {**job.status(), "blocker": blocker, "review_blocker": review_blocker, "model": model_dir is not None,
                "segmentations": segmentations,
                "segmentations_out_of_date": compared["segmentations_out_of_date"],
                "problem": problem or compared["problem"]}

    @app.post("/api/training")
    def start_training() -> dict[str, Any]:
        blocker = training_blocker(session)
        if blocker:
            raise AutomedsamError(blocker)
        with packing:
            job.start(training_steps(session, training), run="training")
        return training_status()

    def start_with_the_model(steps: list[Step], *, run: str, purpose: str,
                             blocker: str | None = None) -> dict[str, Any]:
        if _trained_model(session, training) is None:
            raise AutomedsamError(f"{session.dataset.name} has no trained model to {purpose} yet: train first.")
        if blocker:
            raise AutomedsamError(blocker)
        with packing:
            job.start(steps, run=run)
        return training_status()

    @app.post("/api/review")
    def start_review() -> dict[str, Any]:
        # a drawn sample still to box: the review would hide it, and every Train would stop at it
        return start_with_the_model(review_steps(session, training), run="review", purpose="review",
                                    blocker=unboxed_blocker(session))

    @app.post("/api/segmentations")
    def start_segmenting() -> dict[str, Any]:
        return start_with_the_model(segmentation_steps(session, training), run="segmentation",
                                    purpose="segment its images with")

    @app.get("/api/segmentations")
    def download_segmentations() -> FileResponse:
        with packing:
            if job.running:
                raise HTTPException(423, "A run is going on: download the segmentations once it has finished.")
            files = segmentation_files(session)
            if not files:
                raise AutomedsamError(f"{session.dataset.name} has no segmentations yet: press Segment images first.")
            if (agreement := agreement_file(session)) is not None:
                files.append(agreement)  # which of the model's label maps to check first

            def write(archive: Path) -> None:
                with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
                    for path in files:
                        bundle.write(path, path.name)
            return _zip_response(f"{session.dataset.name}_segmentations.zip", write)

    @app.delete("/api/training")
    def stop_training() -> dict[str, Any]:
        job.stop()
        return training_status()

    @app.get("/api/model")
    def download_model(name: Optional[str] = None) -> FileResponse:
        """The model's zip, carrying the dataset name `name` (automedsam_export_model's --name, validated as it
        validates it: a name keeping the id, or a full DatasetXXX_Name) where the dataset's own names a patient; its
        refusals name the name typed on the page, not the flag."""
        with packing:
            _refuse_while_training(job)
            model_dir = _trained_model(session, training)
            if model_dir is None:
                raise AutomedsamError(f"{session.dataset.name} has no trained model yet: train first.")
            shared = shared_dataset_name(model_dir.parent.name, name, wording=PAGE_WORDING)
            return _zip_response(f"{shared}_{model_dir.name}.zip", lambda archive: export_model(
                model_dir, archive, folds=open_model_folder(model_dir).folds, name=shared, wording=PAGE_WORDING))

    app.mount(STATIC_PATH.rstrip("/"), StaticFiles(directory=STATIC), name="static")
    return app


def _zip_response(filename: str, write: Callable[[Path], None]) -> FileResponse:
    """The zip `write(path)` makes, sent from a temporary folder that goes once it is sent (at once if writing
    fails), so downloads leave nothing behind."""
    workspace = Path(tempfile.mkdtemp(prefix="automedsam_download_"))
    archive = workspace / filename
    try:
        write(archive)
    except BaseException:
        shutil.rmtree(workspace, ignore_errors=True)
        raise
    return FileResponse(archive, media_type="application/zip", filename=filename,
                        background=BackgroundTask(shutil.rmtree, workspace, ignore_errors=True))


class _Token:
    """This server run's secret (as Jupyter's): other accounts of a shared machine can reach its port, but not the
    address automedsam_annotate printed. The page holds it in a cookie, which GET /?token= sets; a script sends it in
    TOKEN_HEADER."""

    def __init__(self) -> None:
        self.value = secrets.token_urlsafe(32)

    def matches(self, sent: Optional[str]) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.value.encode())

    def admits(self, request: Request) -> bool:
        sent = request.cookies.get(_cookie_name(request))
        return self.matches(sent) or self.matches(request.headers.get(TOKEN_HEADER))


def _cookie_name(request: Request) -> str:
    """The token's cookie, one per port of the address the browser opened: browsers share a host's cookies between
    its ports, where two servers (or two SSH tunnels) would overwrite each other's."""
    return f"automedsam_token_{request.url.port or 80}"


class _TokenGuard:
    """Refuse (403) every request but the page's (/, which checks the token itself) and its files' without the
    server run's token: the images, boxes, runs and downloads of /api/, GETs included."""

    def __init__(self, app: ASGIApp, token: _Token) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        public = scope["path"] == "/" or scope["path"].startswith(STATIC_PATH)
        if scope["type"] == "http" and not public and not self.token.admits(Request(scope)):
            await JSONResponse({"detail": NOT_AUTHORISED}, 403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _SecurityHeaders:
    """Add SECURITY_HEADERS to every answer, whichever part of the app gives it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)
        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def _require_the_page(request: Request) -> None:
    """Every request that changes something needs the page's header: any web page may POST to 127.0.0.1 without a
    CORS preflight (no custom header, a form or text body, which older FastAPI reads as JSON), while a custom header
    needs a preflight this server never grants. The page's own script adds it to every call."""
    if request.method not in ("GET", "HEAD") and request.headers.get(PAGE_HEADER) != "1":
        raise HTTPException(403, f"Only the annotation page changes boxes, samples or runs (header {PAGE_HEADER} "
                                 "missing).")


class OpenedElsewhere(Exception):
    """A page opened on a dataset or mode this server run has not served: its boxes would go into the wrong dataset,
    or name samples the queue does not hold."""


class _ServedPages:
    """The ids of the dataset and modes this server run has served; a page sends its id (SESSION_HEADER) with every
    request, and one this run has not served is refused (OpenedElsewhere) before anything is read or written.

    An id names the dataset's folder and the mode, not the process: a plain restart of the same dataset in the same
    mode serves the same id, so a page left open through it saves its unsaved boxes afterwards. The ids served
    earlier in this run stay valid, since a page opened before Train switched the server to review still sends the
    annotate id (and reloads its overview, with the new id, once it sees the run end)."""

    def __init__(self, session: AnnotationSession) -> None:
        self.session = session
        self.served = {self.current()}

    def current(self) -> str:
        """The id of the dataset and mode served now (the page reads it from /api/session)."""
        mode = self._mode()
        folder = str(self.session.dataset.root.resolve())
        return hashlib.sha256(f"{folder}\n{mode}".encode()).hexdigest()[:16]

    def require(self, request: Request) -> None:
        self.served.add(self.current())  # the mode changes during a run: Train and Review end in review
        sent = request.headers.get(SESSION_HEADER)
        if sent is not None and sent not in self.served:
            raise OpenedElsewhere(
                "This page was opened from another automedsam_annotate run: the server on this port now serves "
                f"{self.session.dataset.name} in {self._mode()} mode (another dataset, or a restart in another mode). "
                "Nothing was changed: reload the page to go on.")

    def _mode(self) -> str:
        return "review" if self.session.review is not None else "annotate"


def _refuse_while_training(job: TrainingJob) -> None:
    if job.running:
        run = job.status().get("run", "training")
        raise HTTPException(423, f"{run.capitalize()} is running and reads the boxes: they can be changed again "
                                 "once it has finished (or after Stop).")


def _trained_model(session: AnnotationSession, training: TrainingSettings) -> Path | None:
    """The dataset's model folder of the page's trainer when it has a trained fold, else None."""
    try:
        model_dir = locate_model_folder(session.dataset.name, trainer=training.trainer)
        open_model_folder(model_dir)
    except AutomedsamError:
        return None
    return model_dir


def _blocker_state(session: AnnotationSession) -> tuple[str | None, str | None, str | None]:
    """Why Train cannot start, why Review cannot (a drawn sample to box: Train's other reasons are not Review's), and
    the `problem` that keeps them from being known (a damaged box file of a drawn sample): both stay blocked by it,
    named as a field of the status, not an error, so that Stop and the poll still answer while the page names the
    file."""
    try:
        unboxed = unboxed_blocker(session)
        return unboxed or no_boxes_blocker(session), unboxed, None
    except AutomedsamError as error:
        return str(error), str(error), str(error)


def _segmentations_state(session: AnnotationSession, model_dir: Path | None, *, segmentations: int,
                         device: str | None) -> dict[str, Any]:
    """Whether the segmentations are out of date, and the `problem` that keeps it from being known (a damaged box
    file, of any case): a field of the status, not an error, so that Stop, a start and the poll still answer while
    the page names the file. With a problem they count as out of date: that they are up to date cannot be confirmed
    (new boxes or a retrain may have come since), and Segment images names the file."""
    if not segmentations:
        return {"segmentations_out_of_date": False, "problem": None}
    try:
        return {"segmentations_out_of_date": segmentations_out_of_date(session, model_dir, device=device),
                "problem": None}
    except AutomedsamError as error:
        return {"segmentations_out_of_date": True, "problem": str(error)}


def allowed_hosts_for(host: str) -> list[str]:
    """The Host headers the server answers when it listens on `host`, never any (against DNS rebinding: a site whose
    name is pointed at this machine would read the answers): the loopback names and `host` (127.0.0.2 is loopback
    too); on another interface also this machine's names (its host name, its fully qualified name) and addresses
    (those its name resolves to for 0.0.0.0 and ::, else those of `host`). An alias not listed is refused (400)."""
    names = [host]
    if not is_loopback(host):
        names += [socket.gethostname(), socket.getfqdn(), *_addresses(host)]
    allowed = list(LOOPBACK_HOSTS)
    for name in names:
        for form in ([name, f"[{name}]"] if ":" in name else [name]):  # an IPv6 address is in brackets in Host
            if form.lower() not in allowed:
                allowed.append(form.lower())
    return allowed


def _addresses(host: str) -> list[str]:
    """The addresses of this machine a browser reaches a server listening on `host` at, as far as they are known
    cheaply: those its name resolves to for every interface (0.0.0.0, ::), else those `host` resolves to."""
    try:
        found = socket.getaddrinfo(socket.gethostname() if host in EVERY_INTERFACE else host, None)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in found})


def page_url(host: str, port: int, *, token: str) -> str:
    """The address to open, with the server run's token: this machine's for a server on every interface; an IPv6
    address in brackets."""
    shown = "127.0.0.1" if host in EVERY_INTERFACE else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/?token={token}"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _progress(session: AnnotationSession) -> dict[str, Any]:
    overview = session.overview()
    return {"done": overview["done"], "total": overview["total"], "samples": overview["samples"]}


def _array_response(array: np.ndarray) -> Response:
    """Raw bytes; the shape and the element type travel in headers (X-Shape, X-Dtype), from which the page builds
    its typed array: a label map above 255 sent as bytes would show label 300 as 44."""
    sent = np.ascontiguousarray(array, dtype=SENT_DTYPES[array.dtype.name])
    return Response(sent.tobytes(), media_type="application/octet-stream",
                    headers={"X-Shape": ",".join(str(v) for v in array.shape), "X-Dtype": array.dtype.name,
                             "Cache-Control": "no-store"})


class _BodyLimit:
    """Refuse (413) request bodies above `limit` bytes, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(scope, receive, send, self.limit)
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(scope, receive, send, self.limit)


class _TooLarge(Exception):
    pass


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = JSONResponse({"detail": f"request body larger than {limit} bytes"}, 413)
    await response(scope, receive, send)
