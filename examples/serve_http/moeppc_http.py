#!/usr/bin/env python3
"""moeppc_http.py -- an HTTP front for `moeppc run --serve`: OpenAI-style completions over one model.

    python3 examples/serve_http/moeppc_http.py [--host 127.0.0.1] [--port 8000] -- \
        build/moeppc run specs/moepp-7b.yaml --weights CKPT --tokenizer CKPT/tokenizer.model --batch 8

runs the command (adding --serve) as one subprocess that keeps the model loaded, and answers
  POST /v1/completions  {"prompt": "text" | [token ids] | a list of either (a batch), "n",
                         "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                         "presence_penalty", "frequency_penalty", "logit_bias": {"ID": bias}, "seed",
                         "stop": a string or [strings and token ids], "stream", "logprobs": K,
                         "echo", "continue": the "id" of an earlier completion (its conversation's
                         next turn)}
                        -> {"id", "object": "text_completion", "created", "model",
                            "choices": [{"index" (prompt i's choice j: i * n + j), "text",
                                         "token_ids", "finish_reason", "logprobs": null or
                                         {"tokens", "token_logprobs", "top_logprobs", "text_offset"},
                                         "sequence": the id a "continue" gives for it}],
                            "usage": {"prompt_tokens", "completion_tokens", "total_tokens",
                                      "cached_tokens"}}
                        with "stream": true, server-sent events: a chunk a token (with "echo",
                        the prompt's chunk first: its text, no token ids, with "logprobs" its
                        tokens'), the last with its finish_reason, then "data: [DONE]"
  POST /v1/chat/completions  {"messages": [{"role", "content": text or [{"type": "text", "text"}]}], "n",
                         "max_tokens" (or "max_completion_tokens"; default: until the end of sequence
                         or the caches' end), "temperature", "top_p", "top_k", "repetition_penalty",
                         "presence_penalty", "frequency_penalty", "logit_bias", "seed", "stop", "stream",
                         "stream_options": {"include_usage"}, "logprobs": true|false, "top_logprobs": K}
                        -> {"id", "object": "chat.completion", "created", "model", "choices": [{"index",
                            "message": {"role": "assistant", "content"}, "finish_reason", "logprobs":
                            null or {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}}],
                            "usage": {..., "prompt_tokens_details": {"cached_tokens"}}}; streamed,
                        "chat.completion.chunk"s: each choice's role first, then a "delta" a token.
                        The messages become the prompt through the model's chat template, rendered as
                        Hugging Face's apply_chat_template renders it (Jinja, with the jinja2 module):
                        --chat-template FILE (a template, or a tokenizer_config.json with its
                        "chat_template"), else the tokenizer_config.json beside --tokenizer, --weights
                        or a model folder given as SPEC; the text it writes goes to moeppc with
                        "special" (its <s> and </s> those tokens, as Hugging Face tokenizes it).
                        A conversation sent again with its next message runs only what is new (its
                        sequence's first positions are taken from the caches that hold them).
  GET  /v1/models, GET /health
A field given as null is as if it were absent (OpenAI's fields are nullable). Requests from many
clients at once go to the one subprocess, which decodes up to --batch N of them together; a client
that goes away has its request cancelled ({"cancel": id}). "n" choices are n
requests (drawn with seeds "seed", "seed" + 1, ...; a random one if none is given): started together,
all but the first wait for its prompt and fork its caches (from 9 tokens), so the prompt runs once. Standard
library only, and jinja2 for chat templates (Debian's python3-jinja2; without it the chat endpoint says
so). SIGTERM or ^C: no new requests, those in flight are answered, then moeppc ends (its
status is this one's). The wire protocol is moeppc's (runtime/cpu/serve.h): this file only translates it.

"logprobs": K gives each token's log-probability and the K likeliest tokens' (from the log-softmax of
the logits before any temperature or truncation); "echo" puts the prompt before the text, and with
"logprobs" its tokens' too (the first null) -- lm-evaluation-harness's loglikelihood requests
({"prompt": [[ids], ...], "max_tokens": 1, "logprobs": 1, "echo": true}) score with them. A token's
string is its SentencePiece piece with U+2581 as a space (moeppc run with a tokenizer), else
"token_id:N"; "text_offset" is where the token's text begins in the choice's text, in characters (moeppc's:
the text of the tokens before it as streaming prints it, a character that byte pieces spell whole; with
"echo", the prompt's from its ids' text, which may differ from the prompt as given where the tokenizer
normalises it); without a tokenizer it counts the tokens' strings.
"""
import argparse
import http.server
import os
import itertools
import json
import queue
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

FIELDS = {"max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty", "frequency_penalty",
          "logit_bias", "seed", "stop", "stream", "echo"}
CHAT_FIELDS = FIELDS - {"echo", "max_tokens"}
MAX_TOKENS_UNTIL_END = 1000000  # moeppc's largest "max_tokens": a chat's default, ended by the caches' end
# OpenAI fields taken at their neutral values only; "model" and "user" are taken and ignored
NEUTRAL = {"best_of": 1, "suffix": None}
N_MAX = 16
PROMPTS_MAX = 256
BODY_MAX = 64 << 20  # bytes of a request's body (a 4096-token prompt of ids is about 30 KB)
LOGPROBS_MAX = 20  # moeppc's SERVE_LOGPROBS_MAX


class Backend:
    """The moeppc subprocess: requests written a line each, answers read by one thread and handed
    to the waiting request by id."""

    def __init__(self, command):
        if "--serve" not in command:
            command = command + ["--serve"]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)  # notified as requests end
        self.waiting = {}  # id -> queue of its answer lines (dicts); None: the subprocess ended
        self.line_of = {}  # id -> the number of its line (moeppc answers a line it cannot read under that)
        self.lines = 0
        self.ids = itertools.count(1)
        self.alive = True
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                rid = msg.get("id")
                if isinstance(rid, int) and not isinstance(rid, bool):  # a line moeppc could not read
                    rid = next((r for r, n in self.line_of.items() if n == rid), rid)
                q = self.waiting.get(rid) if isinstance(rid, str) else None
            if q is not None:
                q.put(dict(msg, id=rid))
        with self.lock:
            self.alive = False
            for q in self.waiting.values():
                q.put(None)
            self.idle.notify_all()

    def submit(self, request, q):
        """Send a request (its "id" chosen here), its lines to arrive on q: the id."""
        rid = "cmpl-%d" % next(self.ids)
        with self.lock:
            if not self.alive:
                q.put(None)
                return rid
            self.waiting[rid] = q
            self._write(dict(request, id=rid))
        return rid

    def cancel(self, rid):
        with self.lock:
            if self.alive:
                self._write({"cancel": rid})

    def done(self, rid):
        with self.lock:
            self.waiting.pop(rid, None)
            self.line_of.pop(rid, None)
            self.idle.notify_all()

    def drain(self):
        """Wait for the requests in flight to end (those whose client left are cancelled)."""
        with self.lock:
            while self.waiting and self.alive:
                self.idle.wait()

    def _write(self, obj):  # under the lock
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        except (BrokenPipeError, ValueError):
            return  # the reader sees the end
        self.lines += 1
        if "id" in obj:
            self.line_of[obj["id"]] = self.lines

    def close(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait()


def is_ids(v):
    return isinstance(v, list) and v != [] and all(isinstance(t, int) and not isinstance(t, bool) for t in v)


def neutral(body):
    """Raise ValueError if body gives one of the NEUTRAL fields another value."""
    for k, v in NEUTRAL.items():
        if k in body and body[k] != v:
            raise ValueError('"%s": only %s is supported' % (k, json.dumps(v)))


def completion_requests(body):
    """The moeppc requests of an OpenAI-style body: one a choice, prompt i's choice j at i * n + j (the
    n of a prompt drawn each with its own seed, the request's "seed" + j); or raise ValueError with
    the reason."""
    if not isinstance(body, dict):
        raise ValueError("the body is a JSON object")
    unknown = sorted(set(body) - FIELDS - set(NEUTRAL) - {"prompt", "continue", "model", "user", "n", "logprobs"})
    if unknown:
        raise ValueError('unknown field "%s"' % unknown[0])
    neutral(body)
    prompt = body.get("prompt")
    if isinstance(prompt, str) or is_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        prompts = prompt
    else:
        raise ValueError('"prompt": a string, a list of token ids, or a list of either')
    if len(prompts) > PROMPTS_MAX:
        raise ValueError('"prompt": at most %d prompts a request' % PROMPTS_MAX)
    req = {k: body[k] for k in FIELDS if k in body}
    if "continue" in body:
        req["continue"] = body["continue"]
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= LOGPROBS_MAX:
            raise ValueError('"logprobs": null or an integer from 0 to %d' % LOGPROBS_MAX)
        req["logprobs"] = logprobs
    return fan_out(body, req, prompts)


def fan_out(body, req, prompts, special=False):
    """req for each prompt, "n" times each (the n of a prompt drawn each with its own seed, the
    request's "seed" + j), and n; or raise ValueError."""
    if isinstance(req.get("stop"), str):  # OpenAI's one stop string
        req["stop"] = [req["stop"]]
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= N_MAX:
        raise ValueError('"n": an integer from 1 to %d' % N_MAX)
    if "continue" in req and n * len(prompts) > 1:
        raise ValueError('"continue" with %s: a sequence has one next turn' %
                         ('"n" > 1' if n > 1 else "several prompts"))
    seed = req.get("seed", random.randrange(1 << 31)) if n > 1 else None
    reqs = []
    for p in prompts:
        one = dict(req, **({"prompt": p} if isinstance(p, str) else {"ids": p}))
        if special:
            one["special"] = True
        reqs += [dict(one, seed=seed + j) if isinstance(seed, int) else one for j in range(n)]
    return reqs, n


class ChatTemplate:
    """A Hugging Face chat template: a Jinja template rendered as transformers' apply_chat_template
    renders it (a sandbox, trim_blocks and lstrip_blocks, raise_exception, tojson), with the special
    tokens' strings of the tokenizer_config.json it came from (else LLaMA's <s>, </s>, <unk>)."""

    def __init__(self, path):
        self.tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith(".json"):
            try:
                cfg = json.loads(text)
            except ValueError as e:
                raise ValueError("%s: not JSON: %s" % (path, e))
            source = cfg.get("chat_template") if isinstance(cfg, dict) else None
            if isinstance(source, list):  # named templates: the default one
                source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"),
                              None)
            if not isinstance(source, str):
                raise ValueError('%s: no "chat_template" (a string, or a list with one named "default")' % path)
            for k in self.tokens:
                v = cfg.get(k)
                v = v.get("content") if isinstance(v, dict) else v
                if isinstance(v, str):
                    self.tokens[k] = v
            text = source
        try:
            import jinja2
            import jinja2.ext
            import jinja2.sandbox
        except ImportError:
            self.template, self.why = None, "chat templates need the jinja2 module (Debian: python3-jinja2)"
            return

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                           extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
        try:
            self.template, self.why = env.from_string(text), None
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise ValueError("%s: line %s: %s" % (path, e.lineno, e.message))

    def render(self, messages):
        """The prompt's text (raise ValueError with the template's reason: its raise_exception, or any
        error it meets on these messages, so that a request gets an answer rather than a dead thread)."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, **self.tokens)
        except Exception as e:  # (TemplateError, and TypeError or the like from the template's own code)
            raise ValueError("the chat template: %s: %s" % (type(e).__name__, e))


def chat_template_beside(command):
    """The tokenizer_config.json beside the tokenizer, the weights or a model folder given as SPEC in
    moeppc's command line, or None."""
    places = []
    for i, c in enumerate(command):
        if c in ("--tokenizer", "--weights") and i + 1 < len(command):
            v = command[i + 1]
            places.append(v if os.path.isdir(v) else os.path.dirname(v))
        elif os.path.isdir(c):
            places.append(c)
    return next((os.path.join(d, "tokenizer_config.json") for d in places
                 if os.path.isfile(os.path.join(d, "tokenizer_config.json"))), None)


def chat_requests(body, template):
    """The moeppc requests of an OpenAI-style chat body: the messages through the template, one
    request a choice (as completion_requests); or raise ValueError with the reason."""
    if not isinstance(body, dict):
        raise ValueError("the body is a JSON object")
    known = CHAT_FIELDS | {"messages", "model", "user", "n", "logprobs", "top_logprobs", "max_tokens",
                           "max_completion_tokens", "stream_options"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValueError('unknown field "%s"' % unknown[0])
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError('"messages": a list of {"role", "content"}')
    conv = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and all(isinstance(c, dict) and c.get("type") == "text" and
                                             isinstance(c.get("text"), str) for c in content):
            content = "".join(c["text"] for c in content)
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise ValueError('"messages"[%d]: {"role": a string, "content": text or [{"type": "text", "text"}]}' % i)
        conv.append(dict(m, content=content))
    if "max_completion_tokens" in body and "max_tokens" in body and body["max_completion_tokens"] != body["max_tokens"]:
        raise ValueError('"max_tokens" and "max_completion_tokens" differ')
    opts = body.get("stream_options")
    if opts is not None and not (isinstance(opts, dict) and set(opts) <= {"include_usage"} and
                                 isinstance(opts.get("include_usage", False), bool)):
        raise ValueError('"stream_options": {"include_usage": true or false}')
    if not isinstance(body.get("logprobs", False), bool):
        raise ValueError('"logprobs": true or false')
    top = body.get("top_logprobs")
    if top is not None and not body.get("logprobs"):
        raise ValueError('"top_logprobs" needs "logprobs": true')
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= LOGPROBS_MAX):
        raise ValueError('"top_logprobs": an integer from 0 to %d' % LOGPROBS_MAX)
    req = {k: body[k] for k in CHAT_FIELDS if k in body}
    req["max_tokens"] = body.get("max_completion_tokens", body.get("max_tokens", MAX_TOKENS_UNTIL_END))
    if body.get("logprobs"):
        req["logprobs"] = top or 0
    return fan_out(body, req, [template.render(conv)], special=True)


def token_string(piece, token):
    """A token as OpenAI's logprobs show it: its piece, U+2581 as a space; without one, its id."""
    return piece.replace("\u2581", " ") if isinstance(piece, str) else "token_id:%d" % token


def top_dict(entries):
    """[[id, logprob(, piece)], ...] -> {string: logprob} (two pieces the same string: the likelier)."""
    out = {}
    for e in entries:
        k = token_string(e[2] if len(e) > 2 else None, e[0])
        out.setdefault(k, e[1])
    return out


def openai_logprobs(parts, offset=0):
    """OpenAI's "logprobs" of the tokens of parts ([(ids, moeppc's logprobs object, where the part's text
    begins in the choice's)], in order): their strings, log-probabilities, likeliest (null where moeppc's
    are) and offsets: moeppc's "text_offset" (with a tokenizer: in characters, into the part's text) from
    where the part's text begins, else the strings counted from `offset` on."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for ids, lp, base in parts:
        pieces, at = lp.get("tokens", [None] * len(ids)), lp.get("text_offset")
        for j, (t, piece, chosen, top) in enumerate(zip(ids, pieces, lp["token_logprobs"], lp["top_logprobs"])):
            s = token_string(piece, t)
            out["tokens"].append(s)
            out["token_logprobs"].append(chosen)
            out["top_logprobs"].append(None if top is None else top_dict(top))
            out["text_offset"].append(offset if at is None else base + at[j])
            offset += len(s)
    return out


def event_logprobs(msg):
    """A streamed token's log-probabilities as moeppc's logprobs object of one token."""
    lp = {"tokens": [msg.get("piece")], "token_logprobs": [msg["logprob"]], "top_logprobs": [msg["top_logprobs"]]}
    return dict(lp, text_offset=[msg["text_offset"]]) if "text_offset" in msg else lp


def chat_finish(reason):
    """moeppc's finish_reason as a chat completion's: the caches' end is a length."""
    return "length" if reason == "max_positions" else reason


def chat_logprobs(ids, lp):
    """A chat completion's "logprobs" of ids from moeppc's logprobs object: each token's string, its
    bytes, log-probability and likeliest (a list of the same). A byte piece <0xXX> is that byte (its
    string \\xXX where it is no character alone), as OpenAI gives a token that ends inside one."""
    def entry(token, piece, logprob):
        m = re.fullmatch(r"<0x([0-9A-F]{2})>", piece or "")
        b = bytes([int(m.group(1), 16)]) if m else token_string(piece, token).encode("utf-8")
        return {"token": b.decode("utf-8", "backslashreplace"), "logprob": logprob, "bytes": list(b)}

    pieces = lp.get("tokens", [None] * len(ids))
    return {"content": [dict(entry(t, piece, chosen), top_logprobs=[entry(e[0], e[2] if len(e) > 2 else None, e[1])
                                                                    for e in top or []])
                        for t, piece, chosen, top in zip(ids, pieces, lp["token_logprobs"], lp["top_logprobs"])]}


def make_handler(backend, model, template):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # one line a request on standard error
            sys.stderr.write("moeppc_http: %s %s\n" % (self.address_string(), fmt % args))

        def _json(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:  # (said, so that a client keeping connections open makes a new one)
                self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away

        def _error(self, code, message, kind="invalid_request_error"):
            self._json(code, {"error": {"message": message, "type": kind}})

        def do_GET(self):
            if self.path == "/health":
                self._json(200 if backend.alive else 503, {"status": "ok" if backend.alive else "down"})
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            else:
                self._error(404, "no such endpoint: " + self.path, "not_found")

        def _body(self):
            """The request's body, read whole (so that the connection's next request starts after it):
            Content-Length's bytes, or a chunked body's chunks; or None once refused (400 for a length
            that is no number of bytes or a chunk that is not one, 413 past BODY_MAX, 501 for a transfer
            coding other than chunked), which closes the connection."""
            coding = self.headers.get("Transfer-Encoding")
            length = self.headers.get("Content-Length", "0").strip()
            try:
                if coding is not None:
                    if coding.strip().lower() != "chunked":
                        self.close_connection = True
                        return self._error(501, "Transfer-Encoding: %r: only chunked is taken" % coding[:40],
                                           "not_implemented")
                    if "Content-Length" in self.headers:
                        raise ValueError("a body with both a Content-Length and a Transfer-Encoding")
                    return self._chunked()
                if not re.fullmatch(r"[0-9]{1,20}", length):
                    raise ValueError("Content-Length: %r is no number of bytes" % length[:40])
                if int(length) > BODY_MAX:
                    raise OverflowError(int(length))
                return self.rfile.read(int(length))
            except ValueError as e:
                self.close_connection = True
                return self._error(400, str(e))
            except OverflowError as e:
                self.close_connection = True
                return self._error(413, "the body is %s bytes; at most %d" % (e.args[0], BODY_MAX),
                                   "request_too_large")

        def _chunked(self):
            """A chunked body's bytes (RFC 9112 7.1: hex sizes, extensions and trailers skipped); raise
            ValueError for what is not that, OverflowError past BODY_MAX."""
            body = bytearray()
            while True:
                m = re.fullmatch(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[^\r\n]*)?\r?\n", self.rfile.readline(1024))
                if not m:
                    raise ValueError("a chunked body: a chunk's size is not a hex number on a line of its own")
                size = int(m.group(1), 16)
                if len(body) + size > BODY_MAX:
                    raise OverflowError("more than %d" % BODY_MAX)
                if size == 0:
                    break
                body += self.rfile.read(size)
                if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise ValueError("a chunked body: a chunk is longer than its size says")
            for _ in range(64):  # trailer fields, up to the empty line
                if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                    return bytes(body)
            raise ValueError("a chunked body: more than 64 trailer lines")

        def do_POST(self):
            raw = self._body()
            if raw is None:
                return
            try:
                self._post(raw)
            except Exception as e:  # a bug of ours: the client gets an answer, the log the trace
                self.log_error("%s", traceback.format_exc())
                if not self.streaming:
                    self.close_connection = True
                    self._error(500, "moeppc_http: %s: %s" % (type(e).__name__, e), "server_error")

        def _post(self, raw):
            self.streaming = False
            chat = self.path == "/v1/chat/completions"
            if self.path != "/v1/completions" and not chat:
                return self._error(404, "no such endpoint: " + self.path, "not_found")
            if chat and template is None:
                return self._error(404, "this server has no chat template: start moeppc_http.py with --chat-template "
                                        "FILE (a Jinja template, or a tokenizer_config.json with one)", "not_found")
            if chat and template.template is None:
                return self._error(501, template.why, "not_implemented")
            try:
                try:
                    body = json.loads(raw or b"null")
                except RecursionError:
                    raise ValueError("the body is not JSON: nested too deeply")
                if isinstance(body, dict):  # OpenAI's optional fields are nullable: null is the default
                    body = {k: v for k, v in body.items() if v is not None}
                reqs, n = chat_requests(body, template) if chat else completion_requests(body)
                for r in reqs:  # what JSON has no form for: a lone surrogate (not UTF-8), NaN or an infinity
                    try:
                        json.dumps(r, ensure_ascii=False, allow_nan=False).encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValueError("a string that is not Unicode text: a lone surrogate (\\ud800-\\udfff)")
                    except RecursionError:
                        raise ValueError("a value nested too deeply")
                    except ValueError:
                        raise ValueError("a number that is not finite (NaN, Infinity, or past a double's range)")
            except ValueError as e:
                return self._error(400, str(e))
            q = queue.Queue()  # every choice's lines, in the order they come
            rids = [backend.submit(r, q) for r in reqs]
            try:
                if reqs[0].get("stream"):
                    self.streaming = True
                    usage = chat and (body.get("stream_options") or {}).get("include_usage", False)
                    self._stream(rids, reqs, n, q, chat, usage)
                else:
                    self._answer(rids, reqs, n, self._wait(rids, q), chat)
            finally:
                for rid in rids:
                    backend.done(rid)

        def _gone(self):
            """Whether the client has closed its connection (readable, with nothing to read)."""
            try:
                if not select.select([self.connection], [], [], 0)[0]:
                    return False
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _wait(self, rids, q):
            """Each choice's answer by id (None: the process ended); a client that goes away meanwhile has
            its requests cancelled."""
            got, cancelled = {}, False
            while len(got) < len(rids):
                try:  # (every 50 ms: a tiny model decodes thousands of tokens a second)
                    msg = q.get(timeout=0.05)
                except queue.Empty:
                    if not cancelled and self._gone():
                        for rid in rids:
                            backend.cancel(rid)
                        cancelled = True
                    continue
                if msg is None:
                    return dict.fromkeys(rids)
                if "finish_reason" in msg or "error" in msg:
                    got[msg["id"]] = msg
            return got

        def _completion(self, rids, choices, chat=False):
            kind = ("chat.completion.chunk" if self.streaming else "chat.completion") if chat else "text_completion"
            return {"id": rids[0].replace("cmpl-", "chatcmpl-") if chat else rids[0], "object": kind,
                    "created": int(time.time()), "model": model, "choices": choices}

        @staticmethod
        def _choice(i, rid, text, finish, ids, logprobs=None):  # ("sequence": what a "continue" names)
            return {"index": i, "text": text, "finish_reason": finish, "logprobs": logprobs, "token_ids": ids,
                    "sequence": rid}

        @staticmethod
        def _usage(msgs, n, chat):
            made = sum(len(m["ids"]) for m in msgs)
            prompt = sum(m["prompt_tokens"] for m in msgs[::n])  # (each prompt once, not its n choices)
            cached = sum(m["cached_tokens"] for m in msgs)
            return dict({"prompt_tokens": prompt, "completion_tokens": made, "total_tokens": prompt + made},
                        **({"prompt_tokens_details": {"cached_tokens": cached}} if chat else {"cached_tokens": cached}))

        def _answer(self, rids, reqs, n, got, chat=False):
            msgs = [got[rid] for rid in rids]
            if None in msgs:
                return self._error(503, "the model's process has ended", "server_error")
            for m in msgs:
                if "error" in m:  # (without where in moeppc's input it was: the line the front wrote)
                    return self._error(400, re.sub(r"^--serve line [0-9]+: (column [0-9]+: )?", "", m["error"]))
            choices = []
            for i, (rid, req, m) in enumerate(zip(rids, reqs, msgs)):
                if chat:
                    choices.append({"index": i, "message": {"role": "assistant", "content": m.get("text", "")},
                                    "finish_reason": chat_finish(m["finish_reason"]),
                                    "logprobs": chat_logprobs(m["ids"], m["logprobs"]) if "logprobs" in m else None})
                    continue
                echoed = req.get("prompt", m.get("prompt_text", "")) if req.get("echo") else ""
                text, lp = echoed + m.get("text", ""), None  # (the prompt as it was given, else as its ids decode)
                if "logprobs" in m:
                    parts = [(m["prompt_ids"], m["prompt_logprobs"], 0)] if "prompt_logprobs" in m else []
                    lp = openai_logprobs(parts + [(m["ids"], m["logprobs"], len(echoed))])
                choices.append(self._choice(i, rid, text, m["finish_reason"], m["ids"], lp))
            out = self._completion(rids, choices, chat)
            out["usage"] = self._usage(msgs, n, chat)
            self._json(200, out)

        def _chunk(self, rids, index, reqs, msg, last, offset, chat):
            """A streamed line's chunk: the prompt's ("echo"), a token's, or a choice's end."""
            rid = msg["id"]
            i, lp = index[rid], None
            finish = msg.get("finish_reason", "error" if last else None)
            if chat:
                delta = {} if last else {"content": msg.get("text", "")}
                if "logprob" in msg:
                    lp = chat_logprobs([msg["token"]], event_logprobs(msg))
                return self._completion(rids, [{"index": i, "delta": delta, "logprobs": lp,
                                                "finish_reason": finish and chat_finish(finish)}], chat)
            if "prompt_ids" in msg and not last:  # "echo": the prompt's chunk, before the first token's
                text = reqs[i].get("prompt", msg.get("prompt_text", ""))
                if "prompt_logprobs" in msg:
                    lp = openai_logprobs([(msg["prompt_ids"], msg["prompt_logprobs"], 0)])
                    told = "text_offset" in msg["prompt_logprobs"]
                    offset[rid] = len(text) if told else sum(len(s) for s in lp["tokens"])
                return self._completion(rids, [self._choice(i, rid, text, None, [], lp)])
            if "logprob" in msg:  # (moeppc's "text_offset": into the text after the prompt's)
                lp = openai_logprobs([([msg["token"]], event_logprobs(msg), offset[rid])], offset[rid])
                offset[rid] += 0 if "text_offset" in msg else len(lp["tokens"][0])
            return self._completion(rids, [self._choice(i, rid, "" if last else msg.get("text", ""), finish,
                                                        [msg["token"]] if "token" in msg else [], lp)])

        def _stream(self, rids, reqs, n, q, chat=False, usage=False):
            msg = q.get()
            if msg is None or "error" in msg:  # refused before any token: a plain error
                return self._answer(rids, reqs, 1, dict.fromkeys(rids, msg))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            gone, left, ends = False, len(rids), {}
            index = {rid: i for i, rid in enumerate(rids)}
            offset = dict.fromkeys(rids, 0)  # each choice's text so far, for "text_offset"
            role = {"role": "assistant", "content": ""}  # (a chat's choices' first chunks)
            chunks = [self._completion(rids, [{"index": i, "delta": role, "logprobs": None, "finish_reason": None}],
                                       chat) for i in range(len(rids))] if chat else []
            while True:
                last = "finish_reason" in msg or "error" in msg
                left -= last
                if last:
                    ends[msg["id"]] = msg
                if not gone:  # (an answer's text is the whole: streamed already)
                    chunks.append(self._chunk(rids, index, reqs, msg, last, offset, chat))
                    if not left and usage and all("ids" in ends[r] for r in rids):
                        total = self._usage([ends[r] for r in rids], n, chat)
                        chunks.append(dict(self._completion(rids, [], chat), usage=total))
                    try:
                        for chunk in chunks:
                            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                        if not left:
                            self.wfile.write(b"data: [DONE]\n\n")
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        gone = True  # the client went away: its requests end, their answers are awaited
                        for r in rids:
                            backend.cancel(r)
                    chunks = []
                if not left:
                    break
                msg = q.get()
                if msg is None:
                    break

    return Handler


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client gone between requests (its connection reset) is no error of the server's: a line,
        not socketserver's trace."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            sys.stderr.write("moeppc_http: %s: the client reset its connection\n" % client_address[0])
        else:
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 usage="%(prog)s [--host H] [--port P] -- MOEPPC RUN ARGS...")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: any free port (the one taken is printed)")
    ap.add_argument("--chat-template", metavar="FILE", help="the chat template for /v1/chat/completions: a Jinja "
                    "file, or a tokenizer_config.json with its chat_template (default: the tokenizer_config.json "
                    "beside --tokenizer, --weights or a model folder in the command)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("give the moeppc command after --, e.g. -- build/moeppc run SPEC --weights W --batch 8")
    model = next((c for c in command if c.endswith((".yaml", ".yml", ".json"))), command[0])
    template, path = None, a.chat_template or chat_template_beside(command)
    try:
        template = ChatTemplate(path) if path else None
    except (OSError, ValueError) as e:
        if a.chat_template:
            ap.error("--chat-template: %s" % e)
        print("moeppc_http: no chat endpoint: %s" % e, file=sys.stderr)  # (a base model's config has none)
    backend = Backend(command)
    server = Server((a.host, a.port), make_handler(backend, model, template))
    server.daemon_threads = True
    print("moeppc_http: listening on http://%s:%d" % server.server_address[:2], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        threading.Thread(target=lambda: (backend.proc.wait(), server.shutdown()), daemon=True).start()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:  # (SIGTERM: no new requests; those in flight end first)
        server.server_close()
        backend.drain()
        rc = backend.close()
    sys.exit(rc)


if __name__ == "__main__":
    main()
