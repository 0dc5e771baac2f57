"""Logging: native journald with structured fields, or stderr; secrets redacted first.

Structured fields
    ``log.info("...", extra={"edgevoice": {"EVENT": "session.created", "SESSION": sid}})``
    becomes ``EDGEVOICE_EVENT=session.created`` and ``EDGEVOICE_SESSION=...`` in the journal.
    On stderr they are appended as ``[event=... session=...]``.

Journal output
    Uses ``systemd.journal.JournalHandler`` with our own ``sender_function``. Left alone,
    JournalHandler (python-systemd 235) sends ``CODE_ARGS=str(record.args)``,
    ``EXCEPTION_INFO=str(record.exc_info)`` (the repr of the exception) and *every*
    attribute of the record (``record.__dict__``: ``msg``, ``args``, our ``edgevoice``
    dict...) as a field. journald drops the lowercase names, but the values would still have
    left the process. The sender keeps only valid journal field names, drops
    EXCEPTION_INFO (EXCEPTION_TEXT carries the traceback), flattens the ``edgevoice`` dict
    into ``EDGEVOICE_*`` fields and passes every value through the redactor once more.

Redaction
    :class:`RedactingFilter` sits on the root logger and on every handler we install, so a
    record is scrubbed before any handler formats it: known secrets (``add_secret``) and
    credential-looking values (``Authorization: ...``, ``Bearer ...``, ``api-key: ...``,
    ``"api-key": "..."``, ``sk-...``) are replaced with ``[REDACTED]`` in the message, the
    arguments, the exception text and extra string attributes. When the rendered message or
    the arguments contain something to hide, the record is collapsed to its redacted rendered
    message and its arguments are dropped, so nothing raw is left for CODE_ARGS.

    A piece of a registered secret is a secret too: texts are often shortened (80, 200
    characters...) and a cut inside the key leaves its prefix. Every run of at least
    ``MIN_FRAGMENT_LEN`` (8) characters that also occurs in a registered secret is replaced,
    wherever the cut fell. :func:`redact` is the same redaction for every other output (the
    systemd STATUS= line, the status and metrics files, messages printed by the CLI); redact
    first, shorten afterwards.

    Cost: a text is searched for a few short anchors of each secret with ``str.__contains__``
    (C speed, about 40 for a 164-character key) and only a hit is examined further, so a clean
    record costs a few microseconds more; the credential patterns run only when their keyword
    is in the text.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

__all__ = [
    "MIN_FRAGMENT_LEN",
    "REDACTED",
    "RedactingFilter",
    "StructuredFormatter",
    "add_secret",
    "get_redacting_filter",
    "journal_stream_matches",
    "redact",
    "setup_logging",
]

REDACTED = "[REDACTED]"

# Secrets shorter than this would turn every log line into confetti; real keys are long.
MIN_SECRET_LEN = 4
# Any run of this many characters of a registered secret is redacted too (a shortened text
# may cut the key anywhere). Shorter pieces are too common to hide (and tell little).
MIN_FRAGMENT_LEN = 8
# Fragment search: every ``_ANCHOR_STEP``-th piece of ``_ANCHOR_LEN`` characters of a secret is
# an anchor. Any MIN_FRAGMENT_LEN characters of the secret contain a whole anchor
# (_ANCHOR_STEP + _ANCHOR_LEN - 1 <= MIN_FRAGMENT_LEN), so a text without any anchor holds no
# fragment, and a text with one is checked around it.
_ANCHOR_LEN = 5
_ANCHOR_STEP = MIN_FRAGMENT_LEN - _ANCHOR_LEN + 1

JOURNAL_SOCKET = "/run/systemd/journal/socket"

# A credential value, unless it is already our placeholder (keeps redact() idempotent).
_CREDENTIAL_VALUE = r"(?!\[REDACTED\])[^\s\"',;&}\])]+"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: <scheme> <credentials>, as a header, a dict/JSON key or key=value.
    (
        re.compile(
            r"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:[a-z][\w-]*\s+)?+)"
            + _CREDENTIAL_VALUE
        ),
        r"\1" + REDACTED,
    ),
    # Bearer <token> anywhere (RFC 6750 b64token characters).
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]+=*"), r"\1" + REDACTED),
    # api-key: x, "api-key": "x", api_key=x, x-api-key: x, apikey=x, openai-api-key=x
    (
        re.compile(r"(?i)(\b(?:[a-z]+[-_])*api[-_]?key[\"']?\s*[:=]\s*[\"']?)" + _CREDENTIAL_VALUE),
        r"\1" + REDACTED,
    ),
    # OpenAI-style secret keys wherever they appear (sk-..., sk-proj-...).
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), REDACTED),
)

# For an ASCII text, the (lower-cased) words without which each pattern cannot match: the
# pattern is skipped when one is missing. (Non-ASCII texts always run every pattern: case
# folding of characters such as U+0131 would make a lower-case test unreliable.)
_PATTERN_WORDS: tuple[tuple[str, ...], ...] = (("authorization",), ("bearer",), ("api", "key"),
                                               ("sk-",))


def _common_prefix_len(a: str, i: int, b: str, j: int) -> int:
    """How many characters ``a[i:]`` and ``b[j:]`` have in common at their start."""
    lo, hi = 0, min(len(a) - i, len(b) - j)
    while lo < hi:  # binary search with C-speed slice comparisons
        mid = (lo + hi + 1) // 2
        if a[i : i + mid] == b[j : j + mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix_len(a: str, i: int, b: str, j: int) -> int:
    """How many characters ``a[:i]`` and ``b[:j]`` have in common at their end."""
    lo, hi = 0, min(i, j)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[i - mid : i] == b[j - mid : j]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _FragmentIndex:
    """Finds every run of >= MIN_FRAGMENT_LEN characters of the secrets inside a text.

    Any such run contains one of the secret's anchors (see ``_ANCHOR_STEP``). A text is
    searched for each anchor (``str.find``); an occurrence is extended to the left and right
    as far as the text keeps agreeing with the secret around the anchor's place in it.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        places: dict[str, list[tuple[str, int]]] = {}
        for secret in secrets:
            if len(secret) < MIN_FRAGMENT_LEN:
                continue
            for k in range(0, len(secret) - _ANCHOR_LEN + 1, _ANCHOR_STEP):
                places.setdefault(secret[k : k + _ANCHOR_LEN], []).append((secret, k))
        self._anchors = tuple((anchor, tuple(where)) for anchor, where in places.items())

    def __bool__(self) -> bool:
        return bool(self._anchors)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Sorted, disjoint (start, end) ranges of ``text`` to redact."""
        found: list[tuple[int, int, int]] = []  # start, end, diagonal (text pos - secret pos)
        for anchor, where in self._anchors:
            if anchor not in text:
                continue
            at = text.find(anchor)
            while at >= 0:
                for secret, k in where:
                    diagonal = at - k
                    if any(d == diagonal and s <= at and at + _ANCHOR_LEN <= e
                           for s, e, d in found):
                        continue  # inside a run found from another anchor
                    start = at - _common_suffix_len(text, at, secret, k)
                    end = at + _ANCHOR_LEN + _common_prefix_len(
                        text, at + _ANCHOR_LEN, secret, k + _ANCHOR_LEN
                    )
                    if end - start >= MIN_FRAGMENT_LEN:
                        found.append((start, end, diagonal))
                at = text.find(anchor, at + 1)
        if not found:
            return []
        found.sort()
        merged = [(found[0][0], found[0][1])]
        for start, end, _ in found[1:]:
            last_start, last_end = merged[-1]
            if start <= last_end:
                merged[-1] = (last_start, max(last_end, end))
            else:
                merged.append((start, end))
        return merged

    def redact(self, text: str) -> str:
        spans = self.spans(text)
        if not spans:
            return text
        parts: list[str] = []
        pos = 0
        for start, end in spans:
            parts.append(text[pos:start])
            parts.append(REDACTED)
            pos = end
        parts.append(text[pos:])
        return "".join(parts)


# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)).keys()
) | {"message", "asctime", "taskName"}

_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


class RedactingFilter(logging.Filter):
    """Scrub secrets from log records in place; never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self._fragments = _FragmentIndex(())
        self._generation = 0
        self._marker = f"_edgevoice_redacted_{id(self)}"
        self.add_secrets(secrets)

    # -- registry ------------------------------------------------------------------------

    def add_secret(self, secret: str) -> None:
        """Register a secret (and its whitespace-stripped form) for redaction."""
        if not isinstance(secret, str):
            raise TypeError("secrets must be str")
        candidates = {secret, secret.strip()}
        with self._lock:
            known = set(self._secrets)
            new = {s for s in candidates if len(s) >= MIN_SECRET_LEN and s not in known}
            if not new:
                return
            # Longest first, so a secret containing another is replaced whole.
            ordered = tuple(sorted(known | new, key=len, reverse=True))
            # Index first: a reader that sees the new secrets also sees their fragments.
            self._fragments = _FragmentIndex(ordered)
            self._secrets = ordered
            self._generation += 1

    def add_secrets(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            self.add_secret(secret)

    # -- redaction -----------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """``text`` with every known secret, every run of MIN_FRAGMENT_LEN or more characters
        of one, and every credential-looking value replaced. Redact before shortening."""
        fragments = self._fragments
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if fragments:
            text = fragments.redact(text)
        if text.isascii():
            lowered = text.lower()
            for (pattern, replacement), words in zip(_PATTERNS, _PATTERN_WORDS, strict=True):
                for word in words:  # a loop, not all(): this runs for every string of a record
                    if word not in lowered:
                        break
                else:
                    text = pattern.sub(replacement, text)
                    lowered = text.lower()
        else:
            for pattern, replacement in _PATTERNS:
                text = pattern.sub(replacement, text)
        return text

    def _redact_value(self, value: object) -> object:
        """Redacted replacement for an extra attribute value (only str/dict are touched)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {key: self._redact_value(item) for key, item in value.items()}
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        generation = self._generation
        if getattr(record, self._marker, None) == generation:
            return True
        self._redact_message(record)
        self._redact_exception(record)
        cached = getattr(record, "message", None)
        if isinstance(cached, str):  # left behind by a formatter that saw the record first
            record.message = self.redact(cached)
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS and not name.startswith("_edgevoice_redacted_"):
                redacted = self._redact_value(value)
                if redacted is not value:
                    setattr(record, name, redacted)
        setattr(record, self._marker, generation)
        return True

    def _redact_message(self, record: logging.LogRecord) -> None:
        try:
            rendered = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not leak the args
            rendered = str(record.msg)
            if record.args:
                rendered += " " + self._safe_repr(record.args)
            record.msg = self.redact(rendered)
            record.args = None
            return
        clean = self.redact(rendered)
        leak = clean != rendered
        if record.args and not leak:
            args_text = self._safe_repr(record.args)
            leak = self.redact(args_text) != args_text
        if leak:
            # Collapse to the rendered, redacted text: no raw argument survives (CODE_ARGS).
            record.msg = clean
            record.args = None
        elif not isinstance(record.msg, str):
            record.msg = rendered
            record.args = None

    @staticmethod
    def _safe_repr(value: object) -> str:
        try:
            return repr(value)
        except Exception:  # noqa: BLE001
            return "<unrepresentable>"

    def _redact_exception(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[0] is not None:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            # The exception object itself (its message, its repr) must not reach a handler:
            # JournalHandler would send str(exc_info). The redacted text replaces it.
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)


_FILTER = RedactingFilter()


def get_redacting_filter() -> RedactingFilter:
    """The process-wide filter that ``setup_logging`` installs."""
    return _FILTER


def add_secret(secret: str) -> None:
    """Register a secret loaded after ``setup_logging`` (e.g. the API key)."""
    _FILTER.add_secret(secret)


def redact(text: str) -> str:
    """Redact ``text`` with the process-wide filter (for status files, error reports...)."""
    return _FILTER.redact(text)


# -- formatting ------------------------------------------------------------------------

_SYSLOG_PRIORITY = ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3))


def syslog_priority(levelno: int) -> int:
    """journald PRIORITY for a logging level (the same mapping as JournalHandler)."""
    for limit, priority in _SYSLOG_PRIORITY:
        if levelno <= limit:
            return priority
    return 2 if levelno <= logging.CRITICAL else 1


def _structured(record: logging.LogRecord) -> dict[str, object]:
    fields = getattr(record, "edgevoice", None)
    return dict(fields) if isinstance(fields, Mapping) else {}


class StructuredFormatter(logging.Formatter):
    """Text format for stderr.

    ``journal_stream``: stderr is journald's stream, which timestamps every line itself and
    parses a ``<N>`` syslog priority prefix (SyslogLevelPrefix=yes); every line of a
    multi-line record gets the prefix so a traceback keeps the record's priority.

    The message itself is always one line (line breaks inside it are folded), with the
    structured fields after it, so `grep` and a journal reader see one entry per event; only
    a traceback follows on lines of its own.
    """

    def __init__(self, *, journal_stream: bool) -> None:
        if journal_stream:
            super().__init__("%(name)s: %(message)s")
        else:
            super().__init__("%(asctime)s %(levelname)-8s %(name)s: %(message)s")
        self.journal_stream = journal_stream

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if "\n" in message or "\r" in message:
            folded = copy.copy(record)
            folded.msg = " ".join(part.strip() for part in message.splitlines() if part.strip())
            folded.args = None
            record = folded
        text = super().format(record)
        fields = _structured(record)
        if fields:
            suffix = " ".join(f"{str(k).lower()}={v}" for k, v in fields.items() if v is not None)
            first, sep, rest = text.partition("\n")
            text = f"{first} [{suffix}]{sep}{rest}"
        if self.journal_stream:
            prefix = f"<{syslog_priority(record.levelno)}>"
            text = prefix + text.replace("\n", "\n" + prefix)
        return text


# -- journald ----------------------------------------------------------------------------


def _field_name(key: object) -> str | None:
    name = re.sub(r"[^A-Z0-9_]", "_", str(key).upper())
    return name if _FIELD_NAME.fullmatch(name) else None


class _JournalSender:
    """``sender_function`` for JournalHandler: explicit, redacted fields only."""

    # Passed by JournalHandler.emit; EXCEPTION_INFO is str(exc_info), i.e. the exception repr.
    _DROP = frozenset({"EXCEPTION_INFO"})

    def __init__(self, send: Callable[..., Any], redactor: RedactingFilter) -> None:
        self._send = send
        self._redactor = redactor

    def __call__(self, MESSAGE: str, **fields: Any) -> Any:
        clean = self._redactor.redact
        out: dict[str, Any] = {}
        structured = fields.pop("edgevoice", None)
        for key, value in fields.items():
            if key in self._DROP or value is None or not _FIELD_NAME.fullmatch(key):
                continue  # record attributes (msg, args, levelname, ...) are not fields
            keep_type = (key == "CODE_LINE" and isinstance(value, int)) or (
                key == "MESSAGE_ID" and hasattr(value, "hex")
            )
            if keep_type:
                out[key] = value
            elif isinstance(value, bytes):
                out[key] = clean(value.decode("utf-8", errors="replace"))
            else:
                out[key] = clean(str(value))
        if isinstance(structured, Mapping):
            for key, value in structured.items():
                name = _field_name(key)
                if name is not None and value is not None:
                    out["EDGEVOICE_" + name] = clean(str(value))
        return self._send(clean(str(MESSAGE)), **out)


def _make_journal_handler(identifier: str) -> logging.Handler:
    """A JournalHandler sending through :class:`_JournalSender` (ImportError if missing)."""
    # import_module: the repository's systemd/ directory (unit files) would otherwise pass
    # for a namespace package named "systemd" in type checkers run from the checkout.
    journal = importlib.import_module("systemd.journal")
    sender = _JournalSender(journal.send, _FILTER)
    handler: logging.Handler = journal.JournalHandler(
        sender_function=sender, SYSLOG_IDENTIFIER=identifier
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def journal_stream_matches(fd: int = 2, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``fd`` is the journald stream systemd connected (JOURNAL_STREAM=dev:ino)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev_text, sep, ino_text = value.partition(":")
    if not sep:
        return False
    try:
        dev, ino = int(dev_text), int(ino_text)
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def _stream_fd(stream: IO[str]) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


_INSTALLED = "_edgevoice_installed"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def setup_logging(
    level: str,
    journald: str = "auto",
    secrets: Iterable[str] = (),
    *,
    identifier: str = "edgevoice",
    stream: IO[str] | None = None,
) -> None:
    """Configure the root logger once (calling it again replaces our handlers).

    ``journald``: ``"auto"`` logs natively to the journal when stderr is journald's stream
    (JOURNAL_STREAM matches fd 2) and systemd-python is importable, ``"on"`` always tries
    the journal (falling back to stderr with a warning), ``"off"`` uses stderr.
    ``stream`` replaces stderr (tests).
    """
    levelno = _LEVELS.get(level.strip().lower())
    if levelno is None:
        raise ValueError(f"logging level {level!r} is not one of {', '.join(_LEVELS)}")
    mode = journald.strip().lower()
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"journald {journald!r} is not one of auto, on, off")

    _FILTER.add_secrets(secrets)

    out = stream if stream is not None else sys.stderr
    fd = _stream_fd(out)
    under_journal = fd is not None and journal_stream_matches(fd)

    warnings: list[str] = []
    handler: logging.Handler | None = None
    if mode == "on" or (mode == "auto" and under_journal):
        try:
            handler = _make_journal_handler(identifier)
        except (ImportError, OSError) as exc:
            if mode == "on":
                warnings.append(f"journald logging requested but systemd-python is unusable: {exc}")
        if handler is not None and mode == "on" and not os.path.exists(JOURNAL_SOCKET):
            handler = None
            warnings.append(f"journald logging requested but {JOURNAL_SOCKET} does not exist")
        if warnings:
            warnings[-1] += "; logging to stderr"
    if handler is None:
        handler = logging.StreamHandler(out)
        handler.setFormatter(StructuredFormatter(journal_stream=under_journal))

    handler.addFilter(_FILTER)
    setattr(handler, _INSTALLED, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _INSTALLED, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    if _FILTER not in root.filters:
        root.addFilter(_FILTER)
    root.setLevel(levelno)

    _quiet_websocket()

    for message in warnings:
        logging.getLogger(__name__).warning(message)


def _quiet_websocket() -> None:
    """websocket-client's trace dumps handshake headers (the API key): keep it off."""
    try:
        import websocket

        websocket.enableTrace(False)
    except ImportError:
        pass
    # After enableTrace, which resets the logger's level.
    logging.getLogger("websocket").setLevel(logging.WARNING)
