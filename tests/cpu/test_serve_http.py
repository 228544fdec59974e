#!/usr/bin/env python3
"""test_serve_http.py MOEPPC SOURCE_DIR: examples/serve_http/moeppc_http.py in front of `moeppc run
--serve --batch 3` on a tiny spec (caches of 4096 positions): completions, streamed or not, several at
once and a conversation's next turn, each what `moeppc run --ids` generates alone; a batch of prompts
scored as lm-evaluation-harness asks (echo, logprobs) as moeppc --serve scores each; bad requests
answered 400 with the reason; a streaming client that goes away has its request cancelled."""
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

MOEPPC, SRC = sys.argv[1], sys.argv[2]
work = tempfile.mkdtemp()
atexit.register(shutil.rmtree, work, ignore_errors=True)  # nothing left outside the build
spec = os.path.join(work, "long.yaml")
with open(os.path.join(SRC, "specs/tiny/tiny-moepp.yaml")) as f:
    text = f.read()
assert "max_positions: 64" in text
with open(spec, "w") as f:
    f.write(text.replace("max_positions: 64", "max_positions: 4096"))
RUN = ["run", spec, "--random-weights", "1", "--ignore-eos"]


def fail(msg):
    print("serve_http: " + msg)
    sys.exit(1)


def alone(ids, n, seed=None):
    drawn = ["--temperature", "0.9", "--seed", str(seed)] if seed is not None else []
    out = subprocess.run([MOEPPC] + RUN + drawn + ["--generate", str(n), "--quiet", "--ids", " ".join(map(str, ids))],
                         capture_output=True, text=True, check=True).stdout
    return [int(t) for t in out.split()]


def start(args, err):
    """The HTTP server in front of `moeppc ARGS`: the process and its port."""
    p = subprocess.Popen([sys.executable, os.path.join(SRC, "examples/serve_http/moeppc_http.py"), "--port", "0",
                          "--", MOEPPC] + args, stdout=subprocess.PIPE, stderr=err, text=True)
    first = p.stdout.readline()
    m = re.match(r"moeppc_http: listening on http://127\.0\.0\.1:(\d+)$", first.strip())
    if not m:
        fail("no port said: %r" % first)
    return p, int(m.group(1))


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        fail("the server did not stop at SIGTERM")


err = open(os.path.join(work, "server.err"), "w+")
server, port = start(RUN + ["--batch", "3"], err)


def call(method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), data


def complete(body):
    status, kind, data = call("POST", "/v1/completions", body)
    if status != 200 or kind != "application/json":
        fail("%s: %d %s %r" % (body, status, kind, data))
    return json.loads(data)


def stream(body, stop_after=None):
    """The chunks of a streamed completion (stop_after: close the connection after that many)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/completions", json.dumps(dict(body, stream=True)))
    sock = c.sock
    r = c.getresponse()
    if r.status != 200 or r.getheader("Content-Type") != "text/event-stream":
        fail("stream %s: %d %r" % (body, r.status, r.read()))
    chunks = []
    while True:
        line = r.fp.readline().decode()
        if not line:
            fail("stream %s ended without [DONE] after %d chunks" % (body, len(chunks)))
        if not line.startswith("data: "):
            continue
        if line.strip() == "data: [DONE]":
            break
        chunks.append(json.loads(line[6:]))
        if stop_after is not None and len(chunks) == stop_after:
            sock.shutdown(socket.SHUT_RDWR)  # the client goes away
            sock.close()
            return chunks
    c.close()
    return chunks


LONG, SHORT = [3, 17, 42, 99, 128, 200, 255, 0, 64, 7], [5, 6]
try:
    # a completion, and a conversation's next turn ("continue": its id), each as alone
    a = complete({"prompt": LONG, "max_tokens": 4, "model": "x"})
    ca = a["choices"][0]
    if ca["token_ids"] != alone(LONG, 4) or ca["finish_reason"] != "length" or a["object"] != "text_completion" or \
            a["usage"] != {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "cached_tokens": 0}:
        fail("a completion: %s, alone %s" % (a, alone(LONG, 4)))
    b = complete({"prompt": [7], "continue": a["id"], "max_tokens": 3})
    if b["choices"][0]["token_ids"] != alone(LONG + ca["token_ids"] + [7], 3):
        fail("the next turn: %s" % b)
    # streamed: a chunk a token, the last with the finish_reason
    chunks = stream({"prompt": SHORT, "max_tokens": 5})
    got = [t for ch in chunks for t in ch["choices"][0]["token_ids"]]
    if got != alone(SHORT, 5) or chunks[-1]["choices"][0]["finish_reason"] != "length" or \
            any(ch["choices"][0]["finish_reason"] for ch in chunks[:-1]):
        fail("a stream: %s, alone %s" % (chunks, alone(SHORT, 5)))
    # several at once (decoded together by --batch 3), each as alone
    prompts = [LONG, SHORT, [9, 8, 7, 6, 5], [1, 2, 3], LONG + [1, 2]]
    results = [None] * len(prompts)

    def one(k):
        results[k] = complete({"prompt": prompts[k], "max_tokens": 6})["choices"][0]["token_ids"]

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p, r in zip(prompts, results):
        if r != alone(p, 6):
            fail("at once: %s gave %s, alone %s" % (p, r, alone(p, 6)))
    # "n": 3 choices drawn with seeds 5, 6, 7, each as alone; started together, the second and third
    # wait for the first's prompt and fork its 11 first positions
    P12 = list(range(11, 23))
    c = complete({"prompt": P12, "max_tokens": 4, "n": 3, "temperature": 0.9, "seed": 5})
    if [ch["token_ids"] for ch in c["choices"]] != [alone(P12, 4, 5 + i) for i in range(3)] or \
            [ch["index"] for ch in c["choices"]] != [0, 1, 2] or c["usage"]["cached_tokens"] != 22 or \
            c["usage"]["completion_tokens"] != 12 or c["usage"]["prompt_tokens"] != 12:
        fail('"n": 3: %s, alone %s' % (c, [alone(P12, 4, 5 + i) for i in range(3)]))
    chunks = stream({"prompt": P12, "max_tokens": 4, "n": 2, "temperature": 0.9, "seed": 5})
    if [[t for ch in chunks for t in ch["choices"][0]["token_ids"] if ch["choices"][0]["index"] == i] for i in range(2)] != \
            [alone(P12, 4, 5), alone(P12, 4, 6)] or sum(bool(ch["choices"][0]["finish_reason"]) for ch in chunks) != 2:
        fail('"n": 2 streamed: %s' % chunks)
    # lm-evaluation-harness's loglikelihood request: a batch of prompts, echoed with logprobs 1 and
    # one token generated; each choice (by its index) the prompt's tokens and that token, their
    # log-probabilities (the first null) and likeliest those of moeppc --serve's answer to it alone
    batch = [LONG, SHORT + [1, 2, 3]]
    ll = complete({"prompt": batch, "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0})
    if [ch["index"] for ch in ll["choices"]] != [0, 1] or ll["usage"]["prompt_tokens"] != 15:
        fail("a batch of prompts: %s" % ll)
    for p, ch in zip(batch, ll["choices"]):
        ref = json.loads(subprocess.run([MOEPPC] + RUN + ["--serve"], capture_output=True, text=True, check=True,
                                        input=json.dumps({"ids": p, "max_tokens": 1, "logprobs": 1, "echo": True}) + "\n").stdout)
        lp, want_lp = ch["logprobs"], ref["prompt_logprobs"]["token_logprobs"] + ref["logprobs"]["token_logprobs"]
        tops = ref["prompt_logprobs"]["top_logprobs"] + ref["logprobs"]["top_logprobs"]
        if lp["tokens"] != ["token_id:%d" % t for t in p + ref["ids"]] or ch["token_ids"] != ref["ids"] or \
                lp["token_logprobs"][0] is not None or lp["top_logprobs"][0] is not None or \
                any(abs(a - b) > 1e-6 for a, b in zip(lp["token_logprobs"][1:], want_lp[1:])) or \
                len(lp["token_logprobs"]) != len(want_lp) or \
                [list(t) for t in lp["top_logprobs"][1:]] != [["token_id:%d" % t[0][0]] for t in tops[1:]] or \
                lp["text_offset"] != [sum(len(s) for s in lp["tokens"][:j]) for j in range(len(lp["tokens"]))]:
            fail("loglikelihood of %s: %s; moeppc --serve: %s" % (p, ch, ref))
    # "logprobs" streamed: a chunk's the token's own, its text_offset counting the strings before it
    chunks = stream({"prompt": SHORT, "max_tokens": 3, "logprobs": 2})
    toks = [ch["choices"][0]["logprobs"] for ch in chunks if ch["choices"][0]["token_ids"]]
    if len(toks) != 3 or [len(t["top_logprobs"][0]) for t in toks] != [2] * 3 or \
            [t["text_offset"][0] for t in toks] != [sum(len(u["tokens"][0]) for u in toks[:j]) for j in range(3)]:
        fail("logprobs streamed: %s" % chunks)
    # "echo" streamed: the prompt's chunk first (its text: none for ids without a tokenizer; its tokens'
    # log-probabilities, the first null; no token ids), then a chunk a token: together the answer's
    P = SHORT + [1, 2, 3]
    whole = complete({"prompt": P, "max_tokens": 3, "logprobs": 2, "echo": True})["choices"][0]
    chunks = stream({"prompt": P, "max_tokens": 3, "logprobs": 2, "echo": True})
    first, lps = chunks[0]["choices"][0], [ch["choices"][0]["logprobs"] for ch in chunks if ch["choices"][0]["logprobs"]]
    joined = {k: sum((lp[k] for lp in lps), []) for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
    if first["token_ids"] or first["text"] or first["logprobs"]["tokens"] != ["token_id:%d" % t for t in P] or \
            first["logprobs"]["token_logprobs"][0] is not None or \
            [t for ch in chunks for t in ch["choices"][0]["token_ids"]] != whole["token_ids"] or \
            {k: v for k, v in joined.items() if k != "token_logprobs"} != \
            {k: v for k, v in whole["logprobs"].items() if k != "token_logprobs"} or \
            any((a is None) != (b is None) or (a is not None and abs(a - b) > 1e-6)
                for a, b in zip(joined["token_logprobs"], whole["logprobs"]["token_logprobs"])) or \
            len(joined["token_logprobs"]) != len(P) + 3:
        fail("echo streamed: %s; not streamed: %s" % (chunks, whole))
    # bad requests: 400 with the reason; other paths
    for body, reason in (({"prompt": [999999]}, "vocabulary"), ({"prompt": [1], "foo": 1}, 'unknown field "foo"'),
                         ({"prompt": [1], "n": 0}, '"n": an integer'),
                         ({"prompt": [1], "n": 2, "continue": "cmpl-1"}, "one next turn"), ({"prompt": 5}, '"prompt"'),
                         ({"prompt": [1], "top_p": 2}, "top"), ({"prompt": [1], "continue": "none"}, "continue"),
                         ({"prompt": []}, '"prompt"'), ({"prompt": [[1], [2]], "continue": "cmpl-1"}, "several prompts"),
                         ({"prompt": [1], "logprobs": 21}, '"logprobs"'),
                         # moeppc refuses a NUL under the request's id (under its line's number, the front
                         # had waited for ever), and a lone surrogate has no UTF-8 form to send it in
                         ({"prompt": [1], "stop": ["a\u0000"]}, "NUL"),
                         ({"prompt": [1], "stop": ["\ud800"]}, "surrogate"),
                         ({"prompt": [1], "temperature": float("nan")}, "not finite"),  # (Python's JSON takes NaN
                         ({"prompt": [1], "top_p": float("inf")}, "not finite")):  # and Infinity; moeppc does not)
        status, _, data = call("POST", "/v1/completions", body)
        msg = json.loads(data)["error"]["message"]  # (not where in moeppc's input: the client never saw it)
        if status != 400 or reason not in msg or re.search("--serve line|column", msg):
            fail("%s: %d %r, want 400 saying %r" % (body, status, data, reason))
    raw = socket.create_connection(("127.0.0.1", port))  # a body too large: 413, unread
    raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
    raw.settimeout(30)
    head = b""
    while not head.endswith(b"}"):  # (the server closes the connection after the answer)
        got = raw.recv(4096)
        if not got:
            break
        head += got
    head = head.decode()
    raw.close()
    if not head.startswith("HTTP/1.1 413") or "at most" not in head:
        fail("a body too large: %r" % head)
    # one keep-alive connection: a 404's body is read before the next request (unread, it was taken
    # for the next request's line), a chunked body is taken, a refusal that closes says so
    keep = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    want = complete({"prompt": [3, 1, 4], "max_tokens": 3})["choices"][0]["token_ids"]
    body = json.dumps({"prompt": [3, 1, 4], "max_tokens": 3}).encode()
    for how, path, head, data, status_want in (
            ("a wrong path", "/v1/nope", {}, body, 404),
            ("chunked", "/v1/completions", {"Transfer-Encoding": "chunked"},
             b"".join(b"%x;x=1\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7)) +
             b"0\r\nX-Trailer: 1\r\n\r\n", 200),
            ("a length that is no number", "/v1/completions", {"Content-Length": "1_0"}, b"", 400),
            ("gzip", "/v1/completions", {"Transfer-Encoding": "gzip"}, b"", 501),
            ("deep", "/v1/completions", {}, b"[" * 100000 + b"]" * 100000, 400)):
        keep.putrequest("POST", path)
        for k, v in dict({"Content-Length": str(len(data))} if not head else {}, **head).items():
            keep.putheader(k, v)
        keep.endheaders(data)
        r = keep.getresponse()
        got = r.read()
        closes = r.getheader("Connection") == "close"
        if r.status != status_want or (status_want == 200 and json.loads(got)["choices"][0]["token_ids"] != want) or \
                closes != (status_want in (400, 501) and how != "deep"):
            fail("%s: %d %r (Connection: %s)" % (how, r.status, got[:200], r.getheader("Connection")))
        keep.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})  # next on it
        r = keep.getresponse()
        got = r.read()
        if r.status != 200 or json.loads(got)["choices"][0]["token_ids"] != want:
            fail("the request after %s on its connection: %d %r" % (how, r.status, got[:200]))
    keep.close()
    s1, _, d1 = call("GET", "/health")
    s2, _, d2 = call("GET", "/v1/models")
    s3, _, _ = call("GET", "/nope")
    if (s1, json.loads(d1)) != (200, {"status": "ok"}) or s2 != 200 or json.loads(d2)["data"][0]["id"] != spec or s3 != 404:
        fail("GET: %d %r, %d %r, %d" % (s1, d1, s2, d2, s3))
    # a client that goes away after 2 tokens of 4000: its request is cancelled (moeppc says so at the end)
    stream({"prompt": LONG, "max_tokens": 4000}, stop_after=2)
    # and one that goes away before its (not streamed) answer: cancelled too
    raw = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"prompt": LONG, "max_tokens": 4000}).encode()
    raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    raw.close()
    after = complete({"prompt": SHORT, "max_tokens": 2})  # (the server still serves)
    if after["choices"][0]["token_ids"] != alone(SHORT, 2):
        fail("after a client went away: %s" % after)
finally:
    rc = stop(server)
err.seek(0)
log = err.read()
if " 2 requests cancelled" not in log:
    fail("the requests given up were not cancelled (exit %d):\n%s" % (rc, log))
if rc != 1:  # (moeppc's status: some requests were bad)
    fail("exit %d, want 1 (bad requests):\n%s" % (rc, log))
# text (a sentencepiece model trained here): a completion's text is moeppc's answer's, and the
# streamed chunks' texts join to it
subprocess.run([sys.executable, os.path.join(SRC, "tests/runtime/tokenizer_cases.py"), os.path.join(work, "tok")],
               check=True, capture_output=True)
with open(os.path.join(work, "t512.yaml"), "w") as f:
    f.write(text.replace("vocab: 256", "vocab: 512"))
TEXT = ["run", os.path.join(work, "t512.yaml"), "--random-weights", "5", "--tokenizer", os.path.join(work, "tok/llama.model")]
want = json.loads(subprocess.run([MOEPPC] + TEXT + ["--serve"], input='{"prompt": "the city", "max_tokens": 8}\n',
                                 capture_output=True, text=True, check=True).stdout)
server, port = start(TEXT + ["--batch", "2"], err)
try:
    got = complete({"prompt": "the city", "max_tokens": 8})["choices"][0]
    chunks = stream({"prompt": "the city", "max_tokens": 8})
    cut = want["text"][len(want["text"]) // 2:][:2]  # OpenAI's "stop": one string
    stopped = complete({"prompt": "the city", "max_tokens": 8, "stop": cut})["choices"][0]
    echoed = complete({"prompt": "the city", "max_tokens": 8, "echo": True, "logprobs": 2})["choices"][0]
    echo_chunks = stream({"prompt": "the city", "max_tokens": 8, "echo": True, "logprobs": 2})
finally:
    stop(server)
# echo with text: the prompt as given, then the text; each token's string (the likeliest' too) its
# piece with U+2581 a space, "token_id:N" past the tokenizer's pieces
ref = json.loads(subprocess.run([MOEPPC] + TEXT + ["--serve"], capture_output=True, text=True, check=True,
                                input='{"prompt": "the city", "max_tokens": 8, "echo": true, "logprobs": 2}\n').stdout)
string = lambda piece, t: piece.replace("\u2581", " ") if piece is not None else "token_id:%d" % t
lps = (ref["prompt_logprobs"], ref["logprobs"])
strings = [string(p, t) for lp, ids in zip(lps, (ref["prompt_ids"], ref["ids"])) for p, t in zip(lp["tokens"], ids)]
tops = [None if t is None else [string(e[2], e[0]) for e in t] for lp in lps for t in lp["top_logprobs"]]
if echoed["text"] != "the city" + want["text"] or echoed["logprobs"]["tokens"] != strings or \
        [t and list(t) for t in echoed["logprobs"]["top_logprobs"]] != tops:
    fail("echo with text: %s; moeppc --serve: %s" % (echoed, ref))
# ... streamed: the prompt as given first, the texts and the tokens' strings joining to the same
echo_texts = [ch["choices"][0]["text"] for ch in echo_chunks]
echo_strings = [s for ch in echo_chunks if ch["choices"][0]["logprobs"] for s in ch["choices"][0]["logprobs"]["tokens"]]
if echo_texts[0] != "the city" or "".join(echo_texts) != echoed["text"] or echo_strings != strings:
    fail("echo streamed with text: %s; not streamed: %s" % (echo_chunks, echoed))
joined = "".join(ch["choices"][0]["text"] for ch in chunks)
if (stopped["text"], stopped["finish_reason"]) != (want["text"][:want["text"].find(cut)], "stop"):
    fail("stop %r: %s, the text %r" % (cut, stopped, want["text"]))
if (got["text"], got["token_ids"]) != (want["text"], want["ids"]) or not want["text"] or joined != want["text"]:
    fail("text: %r %s, streamed %r; moeppc --serve: %r %s" % (got["text"], got["token_ids"], joined, want["text"], want["ids"]))
print("serve_http: completions, a stream, 5 at once, a next turn and n choices as alone; a batch of prompts scored "
      "(echo, logprobs) as moeppc's, and echoed streamed; 14 bad requests refused; requests given up (streamed or not) "
      "cancelled; text as moeppc's, streamed the same, cut by a stop string, echoed with its pieces, streamed too")

# the front's Backend routes an answer moeppc gives under a line's number (a line it could not read)
# to the request of that line, rather than leave its client waiting for ever: a stand-in for moeppc
# that answers every line so
sys.path.insert(0, os.path.join(SRC, "examples", "serve_http"))
import moeppc_http  # noqa: E402
import queue  # noqa: E402

fake = moeppc_http.Backend([sys.executable, "-c", "import json, sys\nfor i, _ in enumerate(sys.stdin, 1):\n"
                            "    print(json.dumps({'id': i, 'error': 'line %d unreadable' % i}), flush=True)"])
qs = [queue.Queue() for _ in range(3)]
rids = [fake.submit({"ids": [1]}, q) for q in qs[:2]]
fake.cancel(rids[0])  # (a line of its own: the third request is line 4)
rids.append(fake.submit({"ids": [2]}, qs[2]))
try:
    got = [q.get(timeout=30) for q in qs]
except queue.Empty:
    fail("an answer under a line's number did not reach its request")
if [(m["id"], m["error"]) for m in got] != [(rids[0], "line 1 unreadable"), (rids[1], "line 2 unreadable"),
                                            (rids[2], "line 4 unreadable")]:
    fail("answers under line numbers routed as %s" % got)
for r in rids:
    fake.done(r)
fake.close()
print("serve_http: answers under a line's number reach that line's request")
