#!/usr/bin/env python3
"""moeppc_http.py -- an HTTP front for `moeppc run --serve`: OpenAI-style completions over one model.

    python3 examples/serve_http/moeppc_http.py [--host 127.0.0.1] [--port 8000] -- \
        build/moeppc run specs/moepp-7b.yaml --weights CKPT --tokenizer CKPT/tokenizer.model --batch 8

runs the command (adding --serve) as one subprocess that keeps the model loaded, and answers
  POST /v1/completions  {"prompt": "text" | [token ids] | a list of either (a batch), "n",
                         "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed",
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
  GET  /v1/models, GET /health
Requests from many clients at once go to the one subprocess, which decodes up to --batch N of them
together; a client that goes away has its request cancelled ({"cancel": id}). "n" choices are n
requests (drawn with seeds "seed", "seed" + 1, ...; a random one if none is given): started together,
all but the first wait for its prompt and fork its caches (from 9 tokens), so the prompt runs once. Standard
library only. SIGTERM or ^C: no new requests, those in flight are answered, then moeppc ends (its
status is this one's). The wire protocol is moeppc's (runtime/cpu/serve.h): this file only translates it.

"logprobs": K gives each token's log-probability and the K likeliest tokens' (from the log-softmax of
the logits before any temperature or truncation); "echo" puts the prompt before the text, and with
"logprobs" its tokens' too (the first null) -- lm-evaluation-harness's loglikelihood requests
({"prompt": [[ids], ...], "max_tokens": 1, "logprobs": 1, "echo": true}) score with them. A token's
string is its SentencePiece piece with U+2581 as a space (moeppc run with a tokenizer), else
"token_id:N"; "text_offset" counts those strings from the start of the choice's text.
"""
import argparse
import http.server
import itertools
import json
import queue
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time

FIELDS = {"max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "stream", "echo"}
# OpenAI fields taken at their neutral values only; "model" and "user" are taken and ignored
NEUTRAL = {"best_of": 1, "suffix": None, "presence_penalty": 0, "frequency_penalty": 0}
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
                q = self.waiting.get(msg.get("id"))
            if q is not None:
                q.put(msg)
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
            pass  # the reader sees the end

    def close(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait()


def is_ids(v):
    return isinstance(v, list) and v != [] and all(isinstance(t, int) and not isinstance(t, bool) for t in v)


def completion_requests(body):
    """The moeppc requests of an OpenAI-style body: one a choice, prompt i's choice j at i * n + j (the
    n of a prompt drawn each with its own seed, the request's "seed" + j); or raise ValueError with
    the reason."""
    if not isinstance(body, dict):
        raise ValueError("the body is a JSON object")
    unknown = sorted(set(body) - FIELDS - set(NEUTRAL) - {"prompt", "continue", "model", "user", "n", "logprobs"})
    if unknown:
        raise ValueError('unknown field "%s"' % unknown[0])
    for k, v in NEUTRAL.items():
        if k in body and body[k] != v:
            raise ValueError('"%s": only %s is supported' % (k, json.dumps(v)))
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
    if isinstance(req.get("stop"), str):  # OpenAI's one stop string
        req["stop"] = [req["stop"]]
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= LOGPROBS_MAX:
            raise ValueError('"logprobs": null or an integer from 0 to %d' % LOGPROBS_MAX)
        req["logprobs"] = logprobs
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= N_MAX:
        raise ValueError('"n": an integer from 1 to %d' % N_MAX)
    if "continue" in req and n * len(prompts) > 1:
        raise ValueError('"continue" with %s: a sequence has one next turn' % ('"n" > 1' if n > 1 else "several prompts"))
    seed = req.get("seed", random.randrange(1 << 31)) if n > 1 else None
    reqs = []
    for p in prompts:
        one = dict(req, **({"prompt": p} if isinstance(p, str) else {"ids": p}))
        reqs += [dict(one, seed=seed + j) if isinstance(seed, int) else one for j in range(n)]
    return reqs, n


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
    """OpenAI's "logprobs" of the tokens of parts ([(ids, moeppc's logprobs object)], in order): their
    strings, log-probabilities, likeliest (null where moeppc's are) and offsets from `offset` on."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for ids, lp in parts:
        pieces = lp.get("tokens", [None] * len(ids))
        for t, piece, chosen, top in zip(ids, pieces, lp["token_logprobs"], lp["top_logprobs"]):
            s = token_string(piece, t)
            out["tokens"].append(s)
            out["token_logprobs"].append(chosen)
            out["top_logprobs"].append(None if top is None else top_dict(top))
            out["text_offset"].append(offset)
            offset += len(s)
    return out


def make_handler(backend, model):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # one line a request on standard error
            sys.stderr.write("moeppc_http: %s %s\n" % (self.address_string(), fmt % args))

        def _json(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
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

        def do_POST(self):
            if self.path != "/v1/completions":
                return self._error(404, "no such endpoint: " + self.path, "not_found")
            try:
                size = int(self.headers.get("Content-Length", "0"))
                if not 0 <= size <= BODY_MAX:
                    self.close_connection = True  # (the body is not read)
                    return self._error(413, "the body is %d bytes; at most %d" % (size, BODY_MAX), "request_too_large")
                reqs, n = completion_requests(json.loads(self.rfile.read(size) or b"null"))
            except ValueError as e:
                return self._error(400, str(e))
            q = queue.Queue()  # every choice's lines, in the order they come
            rids = [backend.submit(r, q) for r in reqs]
            try:
                if reqs[0].get("stream"):
                    self._stream(rids, reqs, q)
                else:
                    self._answer(rids, reqs, n, self._wait(rids, q))
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
                try:
                    msg = q.get(timeout=0.25)
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

        def _completion(self, rids, choices):
            return {"id": rids[0], "object": "text_completion", "created": int(time.time()), "model": model,
                    "choices": choices}

        @staticmethod
        def _choice(i, rid, text, finish, ids, logprobs=None):  # ("sequence": what a "continue" names)
            return {"index": i, "text": text, "finish_reason": finish, "logprobs": logprobs, "token_ids": ids,
                    "sequence": rid}

        def _answer(self, rids, reqs, n, got):
            msgs = [got[rid] for rid in rids]
            if None in msgs:
                return self._error(503, "the model's process has ended", "server_error")
            for m in msgs:
                if "error" in m:
                    return self._error(400, m["error"])
            choices = []
            for i, (rid, req, m) in enumerate(zip(rids, reqs, msgs)):
                text, lp = m.get("text", ""), None
                if req.get("echo"):  # the prompt as it was given, else as its ids decode
                    text = req.get("prompt", m.get("prompt_text", "")) + text
                if "logprobs" in m:
                    parts = [(m["prompt_ids"], m["prompt_logprobs"])] if "prompt_logprobs" in m else []
                    lp = openai_logprobs(parts + [(m["ids"], m["logprobs"])])
                choices.append(self._choice(i, rid, text, m["finish_reason"], m["ids"], lp))
            out = self._completion(rids, choices)
            made = sum(len(m["ids"]) for m in msgs)
            prompt = sum(m["prompt_tokens"] for m in msgs[::n])  # (each prompt once, not its n choices)
            out["usage"] = {"prompt_tokens": prompt, "completion_tokens": made, "total_tokens": prompt + made,
                            "cached_tokens": sum(m["cached_tokens"] for m in msgs)}
            self._json(200, out)

        def _stream(self, rids, reqs, q):
            index = {rid: i for i, rid in enumerate(rids)}
            msg = q.get()
            if msg is None or "error" in msg:  # refused before any token: a plain error
                return self._answer(rids, reqs, 1, dict.fromkeys(rids, msg))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            gone, left = False, len(rids)
            offset = dict.fromkeys(rids, 0)  # each choice's text so far, for "text_offset"
            while msg is not None:
                last = "finish_reason" in msg or "error" in msg
                left -= last
                if not gone:  # (an answer's text is the whole: streamed already)
                    rid, lp = msg["id"], None
                    if "prompt_ids" in msg and not last:  # "echo": the prompt's chunk, before the first token's
                        if "prompt_logprobs" in msg:
                            lp = openai_logprobs([(msg["prompt_ids"], msg["prompt_logprobs"])], offset[rid])
                            offset[rid] += sum(len(s) for s in lp["tokens"])
                        text = reqs[index[rid]].get("prompt", msg.get("prompt_text", ""))
                        chunk = self._completion(rids, [self._choice(index[rid], rid, text, None, [], lp)])
                    else:
                        if "logprob" in msg:
                            lp = openai_logprobs([([msg["token"]], {"tokens": [msg.get("piece")], "token_logprobs":
                                                                    [msg["logprob"]], "top_logprobs":
                                                                    [msg["top_logprobs"]]})], offset[rid])
                            offset[rid] += len(lp["tokens"][0])
                        text = "" if last else msg.get("text", "")
                        finish = msg.get("finish_reason", "error" if last else None)
                        chunk = self._completion(rids, [self._choice(index[rid], rid, text, finish,
                                                                     [msg["token"]] if "token" in msg else [], lp)])
                    try:
                        self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                        if not left:
                            self.wfile.write(b"data: [DONE]\n\n")
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        gone = True  # the client went away: its requests end, their answers are awaited
                        for r in rids:
                            backend.cancel(r)
                if not left:
                    break
                msg = q.get()

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 usage="%(prog)s [--host H] [--port P] -- MOEPPC RUN ARGS...")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: any free port (the one taken is printed)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("give the moeppc command after --, e.g. -- build/moeppc run SPEC --weights W --batch 8")
    model = next((c for c in command if c.endswith((".yaml", ".yml", ".json"))), command[0])
    backend = Backend(command)
    server = http.server.ThreadingHTTPServer((a.host, a.port), make_handler(backend, model))
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
