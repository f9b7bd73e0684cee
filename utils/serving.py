"""The teacher server as a library: the provider's logic (keys, batches,
billing, the answer), its HTTP app, and the checks a served model must pass
before it is served. serve_teacher.py is its command line; benchmarks and
tests build a server in process from the same pieces.

build_service() loads what a ServeConfig names; make_server() puts the service
on uvicorn within the limits of utils/http_server.py. The wire protocol is in
utils/remote.py, the bill in utils/ledger.py (docs/SERVING.md).
"""
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
import uuid
from threading import Lock
from typing import NamedTuple, Optional

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from utils.blackbox import BlackBoxTeacher
from utils.http_server import Limits, TeacherServer
from utils.ledger import Ledger
from utils.pool import to_float
from utils.remote import NPY, batch_digest, decode_npy, encode_npy
from utils.run import UserError, pick_device
from utils.teacher import load_teacher

log = logging.getLogger("serve_teacher")  # the command's name, as in utils/http_server.py: one logger per server
MIN_KEY_CHARS = 16
ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # request and run ids: short, printable, loggable
KEY_CHARS = re.compile(r"[!-~]+")  # printable ASCII without spaces: what a Bearer header carries intact
NPY_HEADER_BYTES = 4096  # room for a .npy header above the pixels themselves
DRAIN_LIMIT = 64 << 20  # a refused body up to this size is read to its end before the 400 goes out


class ServeConfig(NamedTuple):
    """What build_service() loads. The fields are named as serve_teacher.py's
    flags and refusals name them as flags, so the command line and a server
    built in process share one set of checks and one set of defaults."""
    model: str  # a pretrain.py checkpoint, a torch.export .pt2 program or a TorchScript file
    keys: str  # keys.json: {"KEY_ID": {"key": SECRET, "budget": IMAGES}}
    ledger: str = "ledger.sqlite3"
    mode: str = "hard"  # what the teacher answers: top-1 labels or probabilities
    max_batch: int = 1024
    device: str = "auto"
    input_shape: Optional[tuple] = None  # (C, H, W); None: from the file
    classes: Optional[int] = None  # None: from the file
    trust_teacher_code: bool = False  # a .pt2 or TorchScript file can run code it carries

    @classmethod
    def of(cls, flags) -> "ServeConfig":
        """The fields of the same names from parsed flags (an argparse namespace)."""
        return cls(**{name: getattr(flags, name) for name in cls._fields})


def load_keys(path: str) -> dict:
    """keys.json -> {sha256 of the secret: (key id, budget)}. Only hashes are
    kept, so no secret sits in memory to be logged by mistake."""
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"--keys {path}: not a readable JSON file ({type(err).__name__})") from None
    if not isinstance(table, dict) or not all(valid_key_entry(k, v) for k, v in table.items()):
        raise UserError(f'--keys {path}: must map each key id (A-Z a-z 0-9 . _ : -) to '
                        '{"key": "...", "budget": N >= 0}')
    keys = {}
    for key_id, entry in table.items():
        if not KEY_CHARS.fullmatch(entry["key"]):  # an HTTP header carries only these; another never matches
            raise UserError(f"--keys {path}: the key of {key_id} holds characters other than printable ASCII "
                            "(no spaces); make one with: python -c 'import secrets; print(secrets.token_urlsafe())'")
        if len(entry["key"]) < MIN_KEY_CHARS:
            raise UserError(f"--keys {path}: the key of {key_id} is shorter than {MIN_KEY_CHARS} characters; "
                            "make one with: python -c 'import secrets; print(secrets.token_urlsafe())'")
        keys[hashlib.sha256(entry["key"].encode()).hexdigest()] = (key_id, entry["budget"])
    if len(keys) != len(table):
        raise UserError(f"--keys {path}: two key ids share one secret")
    return keys


def valid_key_entry(key_id, entry) -> bool:
    """A loggable key id mapped to {"key": str, "budget": int >= 0}; a bool is not a budget."""
    return (ID_PATTERN.fullmatch(key_id) is not None and isinstance(entry, dict)
            and isinstance(entry.get("key"), str) and type(entry.get("budget")) is int and entry["budget"] >= 0)


class Reply(NamedTuple):
    status: int
    body: bytes
    headers: dict
    images: int = 0  # billed by this request (0 for a replay or an error)


def error(status: int, message: str, **extra) -> Reply:
    return Reply(status, json.dumps({"error": message, **extra}).encode(), {"Content-Type": "application/json"})


UNAUTHORIZED = error(401, "unknown or missing API key (send Authorization: Bearer KEY)")


class TeacherService:
    """The provider's logic, HTTP aside: who may ask, what a batch must look
    like, what it costs, and the answer, which leaves only once it is billed."""

    def __init__(self, teacher: BlackBoxTeacher, input_shape: tuple, classes: int, test_acc,
                 keys: dict, ledger: Ledger, max_batch: int, device):
        self.teacher, self.input_shape, self.classes, self.test_acc = teacher, tuple(input_shape), classes, test_acc
        self.keys, self.ledger, self.max_batch, self.device = keys, ledger, max_batch, device
        self.max_body = max_batch * int(np.prod(input_shape)) + NPY_HEADER_BYTES
        self._model_lock = Lock()  # one forward pass at a time: it already uses every core

    def authenticate(self, authorization: str):
        """'Bearer SECRET' -> (key id, budget), or None for a missing or unknown key."""
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme != "Bearer" or not secret:
            return None
        return self.keys.get(hashlib.sha256(secret.strip().encode()).hexdigest())

    def usage(self, key_id: str, budget: int, run_id: str = None) -> Reply:
        used = self.ledger.used(key_id)
        body = {"key_id": key_id, "used": used, "budget": budget or None,
                "remaining": budget - used if budget else None,
                "mode": self.teacher.mode, "input_shape": list(self.input_shape), "classes": self.classes,
                "max_batch": self.max_batch, "test_acc": self.test_acc}
        if run_id:
            body.update(run_id=run_id, run_used=self.ledger.used(key_id, run_id))
        return Reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def check_batch(self, body: bytes):
        """The images of a request body, or an error message saying what is wrong."""
        try:
            pixels = decode_npy(body)
        except ValueError:
            return None, "the body must be a .npy file (numpy.save, allow_pickle=False) of uint8 images"
        want = f"(N, {', '.join(map(str, self.input_shape))})"
        if pixels.dtype != np.uint8:
            return None, f"images must be uint8 (0-255), not {pixels.dtype}"
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != self.input_shape:
            return None, f"images must have shape {want}, not {tuple(pixels.shape)}"
        if not 1 <= len(pixels) <= self.max_batch:
            return None, self.batch_rule(f"this one has {len(pixels)}")
        return pixels, None

    def batch_rule(self, found: str) -> str:
        shape = "x".join(map(str, self.input_shape))
        return f"a batch holds 1 to {self.max_batch} images of {shape} uint8 per request; {found}"

    def predict(self, key_id: str, budget: int, body: bytes, request_id: str, run_id: str) -> Reply:
        """Check, answer and bill one batch. A request id answered before gets
        its stored answer back, unbilled."""
        pixels, problem = self.check_batch(body)
        if problem:
            return error(400, problem)
        n, digest = len(pixels), batch_digest(pixels)
        charge = self.ledger.lookup(key_id, run_id, request_id, digest)
        if charge is None:
            used = self.ledger.used(key_id)
            if budget and used + n > budget:  # refused before any work is spent on it
                return self.over_budget(n, budget, used)
            charge = self.ledger.charge(key_id, run_id, request_id, digest, n, self.answer(pixels), budget)
        if charge.outcome == "over":
            return self.over_budget(n, budget, charge.used)
        if charge.outcome == "conflict":
            return error(409, f"request id {request_id} was used before for other images", images=charge.images)
        left = budget - charge.used if budget else "unlimited"
        headers = {"Content-Type": NPY, "X-Queries-Used": charge.used, "X-Queries-Remaining": left,
                   "X-Run-Queries": charge.run_used, "X-Replayed": int(charge.outcome == "replay")}
        return Reply(200, charge.answer, headers, n if charge.outcome == "billed" else 0)

    def over_budget(self, n: int, budget: int, used: int) -> Reply:
        return error(429, f"a batch of {n} images would pass this key's budget: {budget - used} of "
                          f"{budget} queries left", remaining=budget - used, budget=budget)

    def answer(self, pixels: np.ndarray) -> bytes:
        """The teacher's answer as .npy bytes, exactly as the local black box
        answers the same uint8 images (labels int64 or probabilities float32)."""
        with self._model_lock:
            answers = self.teacher(to_float(torch.from_numpy(pixels).to(self.device)))
        return encode_npy(answers.cpu().numpy())


class App:
    """HTTP around TeacherService, as an ASGI app (Starlette's request and
    response) for uvicorn: one log line per request, never the key. The body is
    read whole before anything is decided, so a client gone before its last byte
    is billed nothing; the model and the ledger run in worker threads."""

    def __init__(self, service: TeacherService):
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return  # no websockets; lifespan is off
        request, start = Request(scope, receive), time.perf_counter()
        who = self.service.authenticate(request.headers.get("authorization"))
        try:
            reply = await (self.route_post(request, who) if request.method == "POST" else self.route_get(request, who))
        except ClientDisconnect:  # gone before its whole body arrived: nothing was billed, nothing to answer
            log.info("key=%s %s %s left before its body arrived; nothing billed", who[0] if who else "-",
                     request.method, request.url.path)
            return
        except Exception:  # the model or the disk failed: nothing was billed, a retry is safe
            log.exception("request failed")
            reply = error(500, "internal error; nothing was billed, try again")
        log.info("key=%s %s %s status=%d images=%d ms=%.1f", who[0] if who else "-", request.method,
                 request.url.path, reply.status, reply.images,
                 1000 * (time.perf_counter() - start))  # ms: until the answer is ready to send
        await self.response(reply)(scope, receive, send)

    async def route_get(self, request, who) -> Reply:
        if not who:
            return UNAUTHORIZED
        if request.method != "GET" or request.url.path != "/v1/usage":
            return error(404, f"no such endpoint: {request.method} {request.url.path}")
        run_id = request.query_params.get("run")
        if run_id is not None and not ID_PATTERN.fullmatch(run_id):
            return error(400, "run must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        return await run_in_threadpool(self.service.usage, *who, run_id)

    async def route_post(self, request, who) -> Reply:
        length = request.headers.get("content-length")
        body = await self.read_body(request, length)  # read first, whatever the answer
        if not who:
            return UNAUTHORIZED
        if request.url.path != "/v1/predict":
            return error(404, f"no such endpoint: POST {request.url.path}")
        request_id = request.headers.get("idempotency-key") or f"server-{uuid.uuid4().hex}"
        run_id = request.headers.get("x-run-id", "")
        if not ID_PATTERN.fullmatch(request_id) or (run_id and not ID_PATTERN.fullmatch(run_id)):
            return error(400, "Idempotency-Key and X-Run-Id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        if length is None:
            return error(400, "send the batch as the body, with a Content-Length")
        if body is None:
            return error(400, self.service.batch_rule(f"this body has {length} bytes"))
        return await run_in_threadpool(self.service.predict, *who, body, request_id, run_id)

    async def read_body(self, request, length):
        """The whole request body, or None when it is over the size limit.
        A refused body is still read to its end (up to DRAIN_LIMIT), so that the
        client gets to read the refusal instead of a reset connection. Raises
        ClientDisconnect if the client leaves (or is cut off by the request
        deadline) before its last byte: a part of a body is never answered."""
        if length is not None and int(length) > DRAIN_LIMIT:
            return None  # the answer closes the connection
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= self.service.max_body:
                chunks.append(chunk)
        return b"".join(chunks) if size <= self.service.max_body else None

    @staticmethod
    def response(reply: Reply) -> Response:
        headers = {name: str(value) for name, value in reply.headers.items() if name != "Content-Type"}
        if reply.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if reply.status >= 400:
            headers["Connection"] = "close"  # a refused client starts afresh
        return Response(reply.body, reply.status, headers, media_type=reply.headers.get("Content-Type"))


def make_server(service: TeacherService, host: str, port: int, limits: Limits = Limits()) -> TeacherServer:
    """uvicorn serving `service` within `limits`; port 0 picks a free port
    (server.server_address[1] says which). Call serve_forever() to run it."""
    return TeacherServer(App(service), host, port, limits)


def build_service(config: ServeConfig) -> TeacherService:
    """Load the model and the keys, open the ledger. Each refusal is one line
    naming the flag to change, and comes before a socket is opened."""
    if config.max_batch < 1:
        raise UserError("--max_batch must be at least 1")
    device = pick_device(config.device)
    if not os.path.isfile(config.model):
        raise UserError(f"--model {config.model} is a folder; pass the model's file" if os.path.isdir(config.model)
                        else f"no model at {config.model}")
    model, info = load_teacher(config.model, device, config.trust_teacher_code)
    shape, classes = served_shape(config, info)
    try_once(config.model, model, shape, classes, device)
    return TeacherService(BlackBoxTeacher(model, mode=config.mode), shape, classes, info.test_acc,
                          load_keys(config.keys), open_ledger(config.ledger), config.max_batch, device)


def served_shape(config: ServeConfig, info) -> tuple:
    """(input shape, classes): the flags', which must agree with what the file says, else the file's."""
    for flag, given, stated in (("input_shape", config.input_shape and tuple(config.input_shape), info.input_shape),
                                ("classes", config.classes, info.classes)):
        if given is not None and stated is not None and given != stated:
            raise UserError(f"--{flag} {given}: {config.model} says {stated}; leave out --{flag}")
    shape, classes = config.input_shape or info.input_shape, config.classes or info.classes
    if shape is None or classes is None:
        missing = " and ".join(n for n, v in (("input_shape", shape), ("classes", classes)) if v is None)
        raise UserError(f"{config.model} does not say its {missing} (a checkpoint or a meta.json without it); "
                        "pass --input_shape C H W and --classes K")
    if min(shape) < 1 or classes < 2:
        raise UserError(f"--input_shape must be three sizes >= 1 and --classes at least 2, not {shape} and {classes}")
    return tuple(shape), classes


def try_once(path: str, model, shape: tuple, classes: int, device) -> None:
    """Answer one blank image before serving, so a model that cannot take
    `shape`, or answers other than `classes` classes, is refused at start
    instead of answering every request 500."""
    try:
        answer = BlackBoxTeacher(model, mode="soft")(torch.zeros(1, *shape, device=device))
    except Exception as err:  # noqa: BLE001 - any model's own error: the shape does not fit it
        raise UserError(f"{path} cannot take one {'x'.join(map(str, shape))} image ({type(err).__name__}); "
                        "check --input_shape") from None
    if tuple(answer.shape) != (1, classes):
        raise UserError(f"{path} answers {tuple(answer.shape)[1:]} outputs per image, not {classes} classes; "
                        "check --classes")


def open_ledger(path: str) -> Ledger:
    """The ledger at `path`, or one line naming --ledger instead of sqlite's traceback."""
    try:
        return Ledger(path)
    except sqlite3.Error as err:  # a folder, a file that is not a database, no write permission
        raise UserError(f"--ledger {path}: not a SQLite ledger this process can write ({err}); "
                        "pass a new file name or a ledger the server wrote") from None

