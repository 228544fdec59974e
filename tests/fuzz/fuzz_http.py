#!/usr/bin/env python3
"""fuzz_http.py MOEPPC SOURCE_DIR [--count N] [--seconds S] [--seed K] [--clients C]: hostile requests
to examples/serve_http/moeppc_http.py in front of `moeppc run --serve --batch 3` on a tiny spec, with a
sentencepiece model trained here and Mistral's chat template where the sentencepiece and jinja2 modules
are (else completions alone), from C clients at once.

Each request is a valid one (completions of ids, of text, of several prompts, echoed and scored,
streamed; chat completions, streamed with the usage) with one to four changes: a field set to a
value of another kind (null, booleans, numbers past every range, NaN, strings with NUL, lone
surrogates and invalid bytes, lists nested twenty thousand deep, megabyte strings, objects) or to
another valid one ("n" up to 16, "max_tokens", sampling, "stop", "echo", "logprobs", "stream"), a
field dropped or an unknown one added, the body replaced by another JSON value, its bytes cut,
flipped or made invalid UTF-8, the path, the Content-Type, the Content-Length (no number) or the
transfer coding (chunked seven ways, two broken; gzip) changed; one in twenty is given up (the
connection closed at once or after a stream's first bytes). What every other one must get: an
answer within 30 s, the status 200, 400, 404, 413 or 501 (never a closed connection, a 5xx or a
hang); an error object with its reason; a 200 with the choices asked (prompts times "n", each index
once; a stream's each ending once), none past "max_tokens", finish_reasons that exist, the usage's
completion tokens their sum; and the greedy request sent next on the same connection the answer it
gets alone. Afterwards /health, that answer again, no trace in the front's log, and an end on
SIGTERM. A failing request is printed (its body's first bytes) with the seed: `--seed K --count N`
(one client) sends the same requests again; FUZZ_HTTP_KEEP=1 keeps its folder (the front's log).
Exit 0 when every answer was good, 1 otherwise."""
import argparse
import atexit
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("moeppc")
ap.add_argument("src")
ap.add_argument("--count", type=int, default=300, help="requests to send (default 300)")
ap.add_argument("--seconds", type=float, default=0, help="send for this long instead of --count")
ap.add_argument("--seed", type=int, default=20261206)
ap.add_argument("--clients", type=int, default=1, help="clients sending at once (default 1)")
args = ap.parse_args()

work = tempfile.mkdtemp()
if not os.environ.get("FUZZ_HTTP_KEEP"):  # (set: the folder, the front's log in it, is kept)
    atexit.register(shutil.rmtree, work, ignore_errors=True)
try:
    import jinja2  # noqa: F401
    import sentencepiece  # noqa: F401
    CHAT = True
except ImportError:
    CHAT = False

spec = os.path.join(work, "tiny.yaml")
with open(os.path.join(args.src, "specs/tiny/tiny-moepp.yaml")) as f:
    spec_text = f.read()
with open(spec, "w") as f:  # (room for the tokenizer's pieces)
    f.write(spec_text.replace("vocab: 256", "vocab: 512"))
run = [args.moeppc, "run", spec, "--random-weights", "3", "--serve", "--batch", "3", "--generate", "4"]
front = [sys.executable, os.path.join(args.src, "examples/serve_http/moeppc_http.py"), "--port", "0"]
if CHAT:
    subprocess.run([sys.executable, os.path.join(args.src, "tests/runtime/tokenizer_cases.py"),
                    os.path.join(work, "tok")], check=True, capture_output=True)
    sys.path.insert(0, os.path.join(args.src, "tests/oracle"))
    from serve_text import CHAT_TEMPLATES  # noqa: E402
    with open(os.path.join(work, "tok/tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATES["mistral"][1]}, f)
    run += ["--tokenizer", os.path.join(work, "tok/llama.model")]
log = open(os.path.join(work, "front.log"), "w+")
proc = subprocess.Popen(front + ["--"] + run, stdout=subprocess.PIPE, stderr=log, text=True)
atexit.register(lambda: proc.poll() is None and proc.kill())
m = re.match(r"moeppc_http: listening on http://127\.0\.0\.1:(\d+)$", proc.stdout.readline().strip())
if not m:
    log.seek(0)
    print("fuzz_http: the front did not start:\n" + log.read()[-2000:])
    sys.exit(1)
PORT = int(m.group(1))

BASES = [("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 3}),
         ("/v1/completions", {"prompt": [[5, 6], [7]], "max_tokens": 2, "n": 2, "temperature": 0.8, "seed": 4}),
         ("/v1/completions", {"prompt": [9, 8, 7, 6], "max_tokens": 1, "logprobs": 2, "echo": True}),
         ("/v1/completions", {"prompt": [4, 4], "max_tokens": 3, "stream": True, "stop": [5, "x"]}),
         ("/v1/completions", {"prompt": [3], "max_tokens": 2, "top_k": 3, "top_p": 0.5, "repetition_penalty": 1.2})]
if CHAT:
    BASES += [("/v1/completions", {"prompt": "the city", "max_tokens": 3, "stop": ["e"], "echo": True}),
              ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                        "logprobs": True, "top_logprobs": 2}),
              ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]},
                                                     {"role": "assistant", "content": "b"},
                                                     {"role": "user", "content": "c"}],
                                        "max_completion_tokens": 2, "stream": True,
                                        "stream_options": {"include_usage": True}})]
FIELDS = ["prompt", "messages", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "top_k",
          "repetition_penalty", "seed", "stop", "stream", "echo", "logprobs", "top_logprobs", "continue",
          "stream_options", "best_of", "suffix", "presence_penalty", "frequency_penalty", "logit_bias", "model", "user",
          "special", "ids"]


VALID = {  # a value each field takes (a request changed by these alone stays one moeppc answers)
    "n": lambda rng: rng.randint(1, 16), "max_tokens": lambda rng: rng.randint(0, 8),
    "temperature": lambda rng: rng.choice([0, 0.5, 1.0, 1.7]), "top_k": lambda rng: rng.randint(0, 40),
    "top_p": lambda rng: rng.choice([0.1, 0.9, 1.0]), "seed": lambda rng: rng.randrange(1 << 40),
    "repetition_penalty": lambda rng: rng.choice([1.0, 1.3, 0.8]), "stream": lambda rng: rng.random() < 0.5,
    "presence_penalty": lambda rng: rng.choice([0, -2, 0.5, 2]),
    "frequency_penalty": lambda rng: rng.choice([0, 1.5, -0.7]),
    "logit_bias": lambda rng: rng.choice([{}, {str(rng.randrange(256)): -100}, {"3": 2.5, "7": -1}]),
    "stop": lambda rng: rng.choice([[], [rng.randrange(256)], ["e", 7], "a"]),
}
COMPLETIONS_VALID = {"echo": lambda rng: rng.random() < 0.5, "logprobs": lambda rng: rng.randint(0, 5),
                     "prompt": lambda rng: rng.choice([[rng.randrange(256) for _ in range(rng.randint(1, 9))],
                                                       [[1, 2], [3], [4, 5, 6]]])}


def value(rng, depth=0):
    """A JSON value of any kind, hostile ones often."""
    k = rng.randrange(16 if depth < 3 else 11)
    if k == 0:
        return rng.choice([None, True, False])
    if k == 1:
        return rng.choice([0, -1, 1, 2, 255, 256, 1 << 31, 1 << 53, (1 << 53) + 1, 1 << 63, 1 << 64, -(1 << 63),
                           10 ** 400, rng.randrange(-1000, 1000000), rng.randrange(20), rng.randrange(20)])
    if k == 2:
        return rng.choice([0.5, -0.0, 1e-320, 1e308, 2.5, float("nan"), float("inf"), -float("inf"), 1.0])
    if k in (3, 4):
        return string(rng)
    if k == 5:
        return [rng.randrange(-3, 300) for _ in range(rng.randrange(0, 6))]
    if k == 6:  # deep nesting
        d = rng.choice([2, 50, 5000, 20000])
        return json.loads("[" * d + "]" * d) if d < 900 else Deep(d)
    if k == 7:
        return {"role": rng.choice(["user", "assistant", "system", "", 5]),
                "content": rng.choice([string(rng), None, 3])}
    if k == 8:
        return [string(rng) for _ in range(rng.randrange(0, 4))]
    if k == 9:
        return list(range(rng.choice([0, 1, 300, 5000])))
    if k == 10:
        return {}
    if k < 13:
        return [value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {string(rng) if rng.random() < 0.3 else rng.choice(FIELDS): value(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


def string(rng):
    pieces = ["a", "the", " ", "\n", "\u0000", "\ud800", "\udfff", "\ufffd", "\uffff", "\U0001f642", "\u202e",
              "<s>", "</s>", "<unk>", "[INST]", "{{", "{%", "\\", '"', "\u00e9"]
    s = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 8)))
    return s * (1 << 20) if rng.random() < 0.02 else s


class Deep:
    """A list nested `depth` deep, written out as text (Python's JSON writer would recurse)."""

    def __init__(self, depth):
        self.depth = depth


def encode(body):
    """The body's JSON text: Python's (NaN, Infinity and lone surrogates as it writes them), with Deep
    values written in place."""
    deeps = []

    def swap(v):
        if isinstance(v, Deep):
            deeps.append(v.depth)
            return "\u0001deep%d\u0001" % (len(deeps) - 1)
        if isinstance(v, list):
            return [swap(x) for x in v]
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        return v
    text = json.dumps(swap(body))
    for i, d in enumerate(deeps):
        text = text.replace('"\\u0001deep%d\\u0001"' % i, "[" * d + "]" * d)
    return text.encode()


def mutate(rng):
    """A request (path, headers, body bytes, whether it asks for a stream) of one to four mutations."""
    path, body = rng.choice(BASES)
    body = json.loads(json.dumps(body))
    headers = {"Content-Type": "application/json"}
    raw = None
    valid = dict(VALID, **(COMPLETIONS_VALID if path == "/v1/completions" else {}))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(12)
        if op >= 10 and isinstance(body, dict):  # (a valid change: answers to check for their sense)
            field = rng.choice(sorted(valid))
            body[field] = valid[field](rng)
            if body.get("temperature") == 0:
                body.pop("top_k", None), body.pop("top_p", None)  # (moeppc: no restriction on a greedy choice)
            continue
        if op < 4 and isinstance(body, dict):
            body[rng.choice(list(body) + FIELDS)] = value(rng)
        elif op == 4 and isinstance(body, dict) and body:
            del body[rng.choice(list(body))]
        elif op == 5 and isinstance(body, dict):
            body[string(rng)] = value(rng)
        elif op == 6 and isinstance(body, dict) and isinstance(body.get("messages"), list) and body["messages"]:
            msg = rng.choice(body["messages"])
            if isinstance(msg, dict):
                msg[rng.choice(["role", "content", "name", "tool_calls"])] = value(rng)
        elif op == 7 and rng.random() < 0.3:
            body = value(rng)
        elif op == 8:
            raw = raw if raw is not None else encode(body)
            kind = rng.randrange(4)
            if kind == 0 and raw:
                raw = raw[:rng.randrange(len(raw))]
            elif kind == 1 and raw:
                i = rng.randrange(len(raw))
                raw = raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]
            elif kind == 2:
                i = rng.randrange(len(raw) + 1)
                raw = raw[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xf4\x90\x80\x80"]) + raw[i:]
            else:
                raw = b""
        elif op == 9:
            if rng.random() < 0.3:  # (a length that lies about the body would only hang its own connection)
                headers.update(rng.choice([{"Content-Length": "abc"}, {"Content-Length": "-5"},
                                           {"Content-Length": "1_0"}, {"Transfer-Encoding": "gzip"}] +
                                          [{"Transfer-Encoding": "chunked", "X-Chunks": c} for c in CHUNKINGS]))
            elif rng.random() < 0.5:
                path = rng.choice(["/v1/completions", "/v1/chat/completions", "/v1/completions/", "/", "/v2/x",
                                   "/v1/completions?x=1", "//v1/completions"])
            else:
                headers["Content-Type"] = rng.choice(["text/plain", "", "application/json; charset=latin-1"])
    data = raw if raw is not None else encode(body)
    return path, headers, data, isinstance(body, dict) and body.get("stream") is True


CHUNKINGS = ["whole", "bytes", "ext", "trailer", "upper", "badhex", "long"]


def chunked(data, how):
    """data as a chunked body, chunked `how` (badhex and long are not bodies: 400)."""
    step = 1 if len(data) < 1 << 16 else 4096  # (a byte a chunk of megabytes only times Python out)
    parts = [data[i:i + step] for i in range(0, len(data), step)] if how == "bytes" else [data] if data else []
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), b";a=b" if how == "ext" else b"", p) for p in parts)
    if how == "upper" and data:
        out = b"%X\r\n%s\r\n" % (len(data), data)
    if how == "badhex":
        out = b"zz\r\n" + out
    if how == "long" and data:
        out = b"%x\r\n%sxx\r\n" % (len(data), data)
    return out + b"0\r\n" + (b"X-T: 1\r\n" if how == "trailer" else b"") + b"\r\n"


def send(path, headers, data, timeout=30, method="POST", then=None):
    """(status, body bytes) or (None, why); with then (a path, headers and body) that request next on
    the same connection (where the server keeps it open): its (status, body) too."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    try:
        is_chunked = headers.get("Transfer-Encoding") == "chunked"
        if "Content-Length" in headers or "Transfer-Encoding" in headers:  # (http.client writes what it is given)
            conn.putrequest(method, path)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders(chunked(data, headers["X-Chunks"]) if is_chunked else data)
        else:
            conn.request(method, path, data, headers)
        r = conn.getresponse()
        first = (r.status, r.read())
        if then is None:
            return first
        path2, headers2, data2 = then
        conn.request("POST", path2, data2, headers2)
        r = conn.getresponse()
        return first, (r.status, r.read())
    except (OSError, http.client.HTTPException) as e:
        why = (None, "%s: %s" % (type(e).__name__, e))
        return why if then is None else (why, why)
    finally:
        conn.close()


def expected_choices(path, data):
    """How many choices a valid request asks for: prompts times "n" (None: not a request this
    answers so, or not known)."""
    try:
        body = json.loads(data)
        n = body.get("n") or 1
        if path == "/v1/chat/completions":
            return n
        prompt = body["prompt"]
        return n * (1 if isinstance(prompt, str) or all(isinstance(t, int) for t in prompt) else len(prompt))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def judge(path, data, status, got, stream):
    """What is wrong with an answer (None: nothing): its status, its form, and in a 200 the choices
    a valid request asks for (each index once), each one's tokens within "max_tokens" and its
    finish_reason one of those there are, and the usage's completion tokens their sum."""
    if status is None:
        return got
    if status not in (200, 400, 404, 413, 501):
        return "status %d: %r" % (status, got[:300])
    text = got.decode("utf-8")  # (raises on bytes that are not UTF-8: the caller reports it)
    chat = path == "/v1/chat/completions"
    if status == 200 and stream and text.startswith("data: "):
        events = [ln[6:] for ln in text.split("\n") if ln.startswith("data: ")]
        if events[-1:] != ["[DONE]"]:
            return "a stream without [DONE]: %r" % text[-300:]
        chunks = [json.loads(e) for e in events[:-1]]
        want = expected_choices(path, data)
        ends = [c["index"] for k in chunks for c in k["choices"] if c.get("finish_reason")]
        if want is not None and sorted(ends) != list(range(want)):
            return "a stream whose choices end %s, for %d asked" % (ends, want)
        return None
    obj = json.loads(text)
    if status != 200:
        if not (isinstance(obj.get("error"), dict) and isinstance(obj["error"].get("message"), str)):
            return "status %d without an error message: %r" % (status, text[:300])
        return None
    choices, want, body = obj["choices"], expected_choices(path, data), json.loads(data)
    if want is not None and sorted(c["index"] for c in choices) != list(range(want)):
        return "choices %s for %d asked: %r" % ([c["index"] for c in choices], want, text[:300])
    made = [len(c["logprobs"]["content"]) if chat and c.get("logprobs") else None if chat else len(c["token_ids"])
            for c in choices]
    limit = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens")
    ends = ("length", "stop") if chat else ("length", "stop", "max_positions")
    if any(c["finish_reason"] not in ends for c in choices) or \
            (isinstance(limit, int) and any(k is not None and k > limit for k in made)):
        return "finish_reasons %s, tokens %s for max_tokens %r" % ([c["finish_reason"] for c in choices], made, limit)
    if None not in made and obj["usage"]["completion_tokens"] != sum(made):
        return "usage %s for choices of %s tokens" % (obj["usage"], made)
    return None


GREEDY = ("/v1/completions", {"Content-Type": "application/json"},
          json.dumps({"prompt": [1, 2, 3, 4], "max_tokens": 4}).encode())


def greedy():
    status, data = send(*GREEDY)
    return json.loads(data)["choices"][0]["token_ids"] if status == 200 else (status, data)


def abandon(path, headers, data):
    """The request sent and its connection closed at once, or after a stream's first bytes: moeppc
    cancels it, the front goes on."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    try:
        conn.request("POST", path, data, headers)
        if random.random() < 0.5:
            conn.getresponse().read(64)
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()


def client(k, share, stats, lock):
    """Client k: its share of the requests (or until the time is up), each judged, with the greedy
    request next on its connection; 1 in 20 given up instead (abandon)."""
    rng = random.Random(args.seed * 1000 + k)
    done = 0
    while (time.time() - start < args.seconds) if args.seconds else done < share:
        path, headers, data, stream = mutate(rng)
        done += 1
        if rng.random() < 0.05 and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            abandon(path, headers, data)
            continue
        (status, got), (status2, got2) = send(path, headers, data, then=GREEDY)
        why = None
        undelimited = not re.fullmatch("[0-9]+", headers.get("Content-Length", "0")) or \
            headers.get("Transfer-Encoding", "chunked") != "chunked"
        try:  # (a body of a length the server cannot know is answered 400 or 501 and the connection closed
            # unread: the client's system may reset it before the answer is read, so no answer is no fault)
            if status is not None or not undelimited:
                why = judge(path, data, status, got, stream)
                if why is None and (status2 != 200 or json.loads(got2)["choices"][0]["token_ids"] != before):
                    why = "the greedy request sent next on the connection: %s %r (alone: %s)" % (
                        status2, got2[:300], before)
        except (ValueError, AttributeError, TypeError, KeyError) as e:
            why = "an answer that is not what it says (%s: %s): %r" % (type(e).__name__, e, got[:300])
        with lock:
            stats["sent"] += 1
            stats[status] = stats.get(status, 0) + 1
            if why:
                stats["bad"] += 1
                if stats["bad"] <= 10:
                    print("fuzz_http: client %d, request %d (seed %d): POST %s %s %r: %s" % (
                        k, done, args.seed, path, headers, data[:200], why))
        if proc.poll() is not None:
            return


before = greedy()
start, lock = time.time(), threading.Lock()
stats = {"sent": 0, "bad": 0}
threads = [threading.Thread(target=client, args=(k, args.count // args.clients + (k < args.count % args.clients),
                                                 stats, lock)) for k in range(args.clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sent, bad = stats.pop("sent"), stats.pop("bad")
if proc.poll() is not None:
    print("fuzz_http: the front ended (exit %s)" % proc.returncode)
    bad += 1
after = greedy() if proc.poll() is None else "the front has ended"
health = send("/health", {}, None, method="GET") if proc.poll() is None else None
if after != before or health != (200, b'{"status": "ok"}'):
    print("fuzz_http: afterwards the greedy request answers %r (before: %r), /health %r" % (after, before, health))
    bad += 1
proc.send_signal(signal.SIGTERM)
try:
    proc.wait(timeout=60)
except subprocess.TimeoutExpired:
    proc.kill()
    print("fuzz_http: the front did not end on SIGTERM")
    bad += 1
log.seek(0)
tail = log.read()
if "Traceback" in tail:
    print("fuzz_http: the front wrote a traceback:\n" + tail[tail.index("Traceback"):][:3000])
    bad += 1
print("fuzz_http: %d requests from %d clients in %.0f s (statuses %s), %d bad%s" % (
    sent, args.clients, time.time() - start, ", ".join("%s: %d" % kv for kv in sorted(stats.items(), key=str)), bad,
    "" if CHAT else "; completions only (no sentencepiece or jinja2)"))
sys.exit(1 if bad else 0)
