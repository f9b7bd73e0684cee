"""A teacher behind an HTTP API (serve_teacher.py): the wire format both sides
share, and RemoteBlackBox, the client with BlackBoxTeacher's interface.

Protocol (version 1):
- POST /v1/predict, headers `Authorization: Bearer KEY`, `Idempotency-Key: ID`
  and optionally `X-Run-Id: RUN`; body: a .npy file (numpy.save, no pickles) of
  uint8 images (N, C, H, W). Answer 200: a .npy of labels (N,) int64 in hard
  mode or probabilities (N, classes) float32 in soft mode (the server's choice),
  with headers X-Queries-Used, X-Queries-Remaining ('unlimited' without a cap),
  X-Run-Queries (billed to this key under this run id) and X-Replayed (1 when
  the request id had been answered before: the same answer, not billed again).
- GET /v1/usage[?run=RUN]: JSON with the key's used and remaining queries (and
  the run's), the answer mode, the input shape, the class count and max_batch.
- Errors are JSON {"error": one line, ...}: 400 malformed batch, 401 unknown
  key, 409 request id reused for other images, 429 over budget (with
  "remaining"); none of them is billed.

Request ids are derived from the run and the images: the run's id (kept in the
run folder, so it survives --resume), a hash of the pixels, and how often this
process asked that batch before (asking again is a new query). A killed run
that resumes regenerates the same batch and sends the same id, so the server
answers it from its ledger without billing it again.
"""
import hashlib
import http.client
import io
import json
import math
import os
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import torch

from utils.blackbox import QueryBudgetExceeded
from utils.pool import to_uint8
from utils.run import UserError, save_json

KEY_ENV = "IDEAL_TEACHER_KEY"  # the API key comes from here, never from a flag saved in args.json
RUN_FILE = "teacher_run.json"  # the run's id for request ids, in the run folder
NPY = "application/x-npy"


class RemoteTeacherError(UserError):
    """The served teacher refused a request or could not be reached."""


class RemoteBudgetExceeded(QueryBudgetExceeded, UserError):
    """The server refused a batch that would pass the key's budget (429). A
    UserError too, so a script stops on it with one line."""


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


NPY_MAGIC = b"\x93NUMPY"
NPY_FIELDS = {"descr": r"'descr':\s*'([^']+)'", "fortran_order": r"'fortran_order':\s*(True|False)",
              "shape": r"'shape':\s*\(([0-9,\s]*)\)"}


def decode_npy(body: bytes) -> np.ndarray:
    """A .npy body (format versions 1 to 3) -> array; ValueError if it is not
    one, or holds Python objects. Parsed here, not by numpy.load: its header
    parser runs ast, which Python 3.11 cannot run in two threads at once
    (SystemError: AST constructor recursion depth mismatch, met under load)."""
    if body[:6] != NPY_MAGIC or len(body) < 10:
        raise ValueError("not a .npy file")
    width = 2 if body[6] == 1 else 4  # bytes of the header length: 2 in version 1, 4 after
    start = 8 + width
    end = start + int.from_bytes(body[8:start], "little")
    header = body[start:end].decode("latin1")
    fields = {name: re.search(pattern, header) for name, pattern in NPY_FIELDS.items()}
    if not all(fields.values()):
        raise ValueError("a .npy header without descr, fortran_order and shape")
    try:  # a plain type code only: numpy runs ast (and raises SyntaxError) on a descr with ',' or '('
        if not re.fullmatch(r"[<>|=]?[A-Za-z]\w*", fields["descr"][1]):
            raise TypeError
        dtype = np.dtype(fields["descr"][1])
    except TypeError:
        raise ValueError(f"not a dtype: {fields['descr'][1]}") from None
    shape = tuple(int(v) for v in fields["shape"][1].replace(",", " ").split())
    if dtype.hasobject or len(body) - end != dtype.itemsize * math.prod(shape):
        raise ValueError("a .npy array of Python objects, or of the wrong length")
    order = "F" if fields["fortran_order"][1] == "True" else "C"
    return np.frombuffer(body, dtype, offset=end).reshape(shape, order=order).copy()  # writable, for torch


def batch_digest(pixels: np.ndarray) -> str:
    """What identifies a batch: its shape and every pixel."""
    return hashlib.sha256(repr(pixels.shape).encode() + np.ascontiguousarray(pixels).tobytes()).hexdigest()


def read_run_id(path: str) -> str:
    """The run id in teacher_run.json; one line if the file is damaged."""
    try:
        with open(path) as f:
            run_id = json.load(f)["run_id"]
    except (OSError, ValueError, TypeError, KeyError):
        run_id = None
    if not isinstance(run_id, str) or not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", run_id):
        raise UserError(f"--resume: {path} is damaged (it must hold the run's \"run_id\"); restore it from a "
                        "backup, or start a new run with another --exp_name")
    return run_id


class RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a 3xx and send the Authorization header (the API key)
    to wherever it points; a teacher API has no reason to redirect, so a 3xx is
    an answer like any other non-200, and the key goes nowhere else."""

    def redirect_request(self, *args, **kwargs):
        return None


NO_REDIRECTS = urllib.request.build_opener(RefuseRedirects)


class RemoteBlackBox:
    """BlackBoxTeacher's interface (queries, remaining, budget, mode, __call__)
    over HTTP. Its count is the server's bill for this run, read from every
    answer, so the two agree exactly. Images are sent as uint8: IDEAL's pool
    already holds uint8 images, so nothing is lost."""

    def __init__(self, url: str, key: str, budget: int = 0, timeout_s: float = 60.0,
                 retries: int = 5, backoff_s: float = 0.5):
        """budget: this client's own cap (0 = none), on top of the key's budget
        on the server; retries: further tries after a connection error, a 5xx or a 408,
        waiting backoff_s, 2*backoff_s, ... (at most 30 s) in between."""
        self.url, self._key = url.rstrip("/"), key
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.run_id = secrets.token_hex(8)
        self.budget, self.queries = budget, 0
        self._asked = {}  # digest -> times this process asked that batch (a repeat is a new query)
        info = self.usage()
        self.mode, self.classes, self.max_batch = info["mode"], info["classes"], info["max_batch"]
        self.input_shape, self.test_acc = tuple(info["input_shape"]), info["test_acc"]
        self._server_remaining = math.inf if info["remaining"] is None else info["remaining"]

    @property
    def remaining(self) -> float:
        """Images that both this client's budget and the key's will still pay for."""
        own = math.inf if self.budget == 0 else self.budget - self.queries
        return min(own, self._server_remaining)

    def bind_run(self, run_dir: str) -> None:
        """Take the run's id from its folder (the run's first bind_run writes
        it there), so that a resumed run sends the request ids of the run it
        continues. A folder that holds a run (last.pt) but no id is refused: a
        new id would make the provider bill this run afresh, past its budget."""
        path = os.path.join(run_dir, RUN_FILE)
        if os.path.isfile(path):
            self.run_id = read_run_id(path)
        elif os.path.isfile(os.path.join(run_dir, "last.pt")):
            raise UserError(f"--resume: {path} is missing: it names this run to the teacher's provider, whose bill "
                            "for the run is its query count; restore the file (or start a new run with another "
                            "--exp_name)")
        else:
            save_json({"url": self.url, "run_id": self.run_id}, path)

    def usage(self) -> dict:
        """The server's GET /v1/usage for this key and run."""
        status, _, body = self._send("GET", f"/v1/usage?run={urllib.parse.quote(self.run_id)}")
        self._raise_for(status, body)
        return json.loads(body)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, C, H, W) float in [0, 1] -> labels (N,) int64 in hard mode,
        probabilities (N, classes) float32 in soft mode, on the images' device."""
        n = images.shape[0]
        if n > self.remaining:
            raise QueryBudgetExceeded(f"{n} queries asked, {self.remaining} left "
                                      f"(own budget {self.budget or 'none'}, the server's for the key)")
        pixels = to_uint8(images).cpu().numpy()
        if n == 0:  # nothing to ask: an empty answer of the right kind, no request
            hard = self.mode == "hard"
            return torch.zeros((0,) if hard else (0, self.classes), dtype=torch.int64 if hard else torch.float32,
                               device=images.device)
        parts = [self._ask(pixels[i:i + self.max_batch]) for i in range(0, n, self.max_batch)]
        return torch.from_numpy(np.concatenate(parts)).to(images.device)

    def _ask(self, pixels: np.ndarray) -> np.ndarray:
        """One request; sent again with the same id after a failure, so it is billed once."""
        digest = batch_digest(pixels)
        request_id = f"{self.run_id}.{digest[:32]}.{self._asked.get(digest, 0)}"
        status, headers, body = self._send("POST", "/v1/predict", encode_npy(pixels),
                                           {"Idempotency-Key": request_id, "X-Run-Id": self.run_id,
                                            "Content-Type": NPY})
        self._raise_for(status, body)
        self._asked[digest] = self._asked.get(digest, 0) + 1
        billed = 0 if headers["X-Replayed"] == "1" else len(pixels)
        # the server's bill for the run, unless a resume set a higher floor (billed_queries)
        self.queries = max(int(headers["X-Run-Queries"]), self.queries + billed)
        left = headers["X-Queries-Remaining"]
        self._server_remaining = math.inf if left == "unlimited" else int(left)
        answers = decode_npy(body)
        want = (len(pixels),) if self.mode == "hard" else (len(pixels), self.classes)
        if answers.shape != want:
            raise RemoteTeacherError(f"the teacher at {self.url} answered shape {answers.shape}, not {want}")
        return answers

    def _raise_for(self, status: int, body: bytes) -> None:
        """One-line errors for the answers that are not 200."""
        if status == 200:
            return
        try:
            reply = json.loads(body)
        except ValueError:
            reply = {"error": body[:200].decode(errors="replace")}
        if status == 429:
            self._server_remaining = reply.get("remaining", 0)
            raise RemoteBudgetExceeded(f"the teacher at {self.url} refused a batch: {reply['error']}; "
                                       "--resume continues this run once the key has budget again")
        hint = f" (is ${KEY_ENV} the key the provider gave you?)" if status == 401 else ""
        raise RemoteTeacherError(f"the teacher at {self.url} answered {status}: {reply.get('error')}{hint}")

    def _send(self, method: str, path: str, body: bytes = None, headers: dict = None):
        """(status, headers, body) of the first answer that is neither a 5xx nor
        a 408 (the server's deadline for the request ran out before it all
        arrived: nothing was read, so nothing was billed); after `retries` more
        tries a RemoteTeacherError."""
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Authorization": f"Bearer {self._key}", **(headers or {})})
        for attempt in range(self.retries + 1):
            try:
                with NO_REDIRECTS.open(request, timeout=self.timeout_s) as reply:
                    return reply.status, reply.headers, reply.read()
            except urllib.error.HTTPError as err:
                status, reply_headers, payload = err.code, err.headers, err.read()
                if status < 500 and status != 408:
                    return status, reply_headers, payload
                failure = f"{status} {payload[:200].decode(errors='replace')}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                failure = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if attempt < self.retries:
                time.sleep(min(self.backoff_s * 2 ** attempt, 30.0))
        raise RemoteTeacherError(f"the teacher at {self.url} did not answer after {self.retries + 1} tries "
                                 f"(last: {failure}); nothing was billed twice: run again (--resume) to go on")


def check_url(url: str) -> None:
    """--teacher_url must be http(s)://HOST[:PORT][/PATH]: one line otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # a port that is not a number raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UserError(f"--teacher_url {url}: not a teacher URL; give http://HOST:PORT as serve_teacher.py prints it")


def connect_teacher(url: str, dataset_shape: tuple, classes: int, mode: str, budget: int):
    """The black box for ideal.py's --teacher_url, with the key from $IDEAL_TEACHER_KEY.
    Checks that the served teacher takes this dataset and answers in `mode`.
    Returns (RemoteBlackBox, teacher's test accuracy in % as the server states it, NaN if not)."""
    check_url(url)
    key = os.environ.get(KEY_ENV)
    if not key:
        raise UserError(f"--teacher_url needs the API key in the environment: export {KEY_ENV}=...")
    if not re.fullmatch(r"[!-~]+", key):  # what an HTTP header carries intact; never echo the key itself
        raise UserError(f"${KEY_ENV} holds characters an API key cannot have (only printable ASCII, no spaces or "
                        "newlines): set it to the key exactly as the provider gave it")
    teacher = RemoteBlackBox(url, key, budget=budget)
    if teacher.mode != mode:
        raise UserError(f"the teacher at {url} answers {teacher.mode} labels (the provider's choice); "
                        f"pass --bb_mode={teacher.mode}")
    if (teacher.input_shape, teacher.classes) != (tuple(dataset_shape), classes):
        raise UserError(f"the teacher at {url} takes {teacher.input_shape} images and answers {teacher.classes} "
                        f"classes; this dataset has {tuple(dataset_shape)} images and {classes} classes")
    return teacher, math.nan if teacher.test_acc is None else teacher.test_acc
