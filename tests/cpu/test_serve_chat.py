#!/usr/bin/env python3
"""test_serve_chat.py MOEPPC SOURCE_DIR: examples/serve_http/moeppc_http.py's chat completions in front
of `moeppc run --serve` (a tiny spec, a sentencepiece model trained here, Mistral's chat template in a
tokenizer_config.json beside it): a conversation's prompt is the template's text tokenized as Hugging
Face does (<s> and </s> those tokens, each part between them sentencepiece's encoding of it alone:
computed here with the sentencepiece library), and its answer, log-probabilities and usage those of
`moeppc run --serve` given those ids; the conversation sent again with its next message takes its
first turn from the caches; streamed, the role first, the deltas joining to the same text, and the
usage last when asked; presence and frequency penalties and logit biases passed on; the template's own errors and bad
requests answered 400; --chat-template with a plain Jinja file; a server with no template answers 404."""
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import sentencepiece as spm

MOEPPC, SRC = sys.argv[1], sys.argv[2]
work = tempfile.mkdtemp()
atexit.register(shutil.rmtree, work, ignore_errors=True)  # nothing left outside the build
subprocess.run([sys.executable, os.path.join(SRC, "tests/runtime/tokenizer_cases.py"), os.path.join(work, "tok")],
               check=True, capture_output=True)
with open(os.path.join(SRC, "specs/tiny/tiny-moepp.yaml")) as f:
    spec_text = f.read()
spec = os.path.join(work, "chat.yaml")
with open(spec, "w") as f:
    f.write(spec_text.replace("vocab: 256", "vocab: 512").replace("max_positions: 64", "max_positions: 512"))
TOK = os.path.join(work, "tok/llama.model")
RUN = ["run", spec, "--random-weights", "5", "--tokenizer", TOK, "--ignore-eos"]
sp = spm.SentencePieceProcessor(model_file=TOK)
BOS, EOS = sp.bos_id(), sp.eos_id()
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
           "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
with open(os.path.join(work, "tok/tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "chat_template": MISTRAL}, f)


def fail(msg):
    print("serve_chat: " + msg)
    sys.exit(1)


def mistral_ids(messages):
    """Mistral's template by hand, tokenized as Hugging Face does: <s>, then each user turn's
    "[INST] ... [/INST]" and each answer with </s> after it, the text between special tokens alone."""
    ids, text = [BOS], ""
    for m in messages:
        if m["role"] == "user":
            text += "[INST] " + m["content"] + " [/INST]"
        else:
            ids += sp.encode(text + m["content"]) + [EOS]
            text = ""
    return ids + (sp.encode(text) if text else [])


def serve_alone(request):
    """moeppc --serve's answer to one request, alone."""
    out = subprocess.run([MOEPPC] + RUN + ["--serve"], input=json.dumps(request) + "\n", capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def start(args, extra=()):
    p = subprocess.Popen([sys.executable, os.path.join(SRC, "examples/serve_http/moeppc_http.py"), "--port", "0"] +
                         list(extra) + ["--", MOEPPC] + args, stdout=subprocess.PIPE, stderr=err, text=True)
    m = re.match(r"moeppc_http: listening on http://127\.0\.0\.1:(\d+)$", p.stdout.readline().strip())
    if not m:
        fail("no port said")
    return p, int(m.group(1))


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        fail("the server did not stop at SIGTERM")


def post(port, body, path="/v1/chat/completions"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", path, json.dumps(body))
    r = c.getresponse()
    data = r.read().decode()
    c.close()
    if body.get("stream") and r.status == 200:
        lines = [ln[6:] for ln in data.split("\n") if ln.startswith("data: ")]
        if lines[-1] != "[DONE]":
            fail("a stream without [DONE]: %r" % data)
        return r.status, [json.loads(ln) for ln in lines[:-1]]
    return r.status, json.loads(data)


def chat(port, body):
    status, got = post(port, body)
    if status != 200:
        fail("%s: %d %s" % (body, status, got))
    return got


err = open(os.path.join(work, "server.err"), "w+")
server, port = start(RUN + ["--batch", "2"])
TURN1 = [{"role": "user", "content": "the city of the world"}]
try:
    # one turn: the prompt Mistral's template makes, tokenized as Hugging Face does; the answer,
    # its log-probabilities and likeliest as moeppc's to those ids
    a = chat(port, {"messages": TURN1, "max_tokens": 5, "logprobs": True, "top_logprobs": 2, "model": "x",
                    "stop": None, "seed": None, "max_completion_tokens": None})  # (null: the default)
    want_ids = mistral_ids(TURN1)
    ref = serve_alone({"ids": want_ids, "max_tokens": 5, "logprobs": 2})
    ch, lp = a["choices"][0], a["choices"][0]["logprobs"]["content"]
    if a["object"] != "chat.completion" or ch["message"] != {"role": "assistant", "content": ref["text"]} or \
            ch["finish_reason"] != "length" or a["usage"]["prompt_tokens"] != len(want_ids) or \
            a["usage"]["completion_tokens"] != 5 or len(lp) != 5 or \
            any(abs(e["logprob"] - w) > 1e-6 for e, w in zip(lp, ref["logprobs"]["token_logprobs"])) or \
            [[t["logprob"] for t in e["top_logprobs"]] for e in lp] != \
            [[t[1] for t in w] for w in ref["logprobs"]["top_logprobs"]]:
        fail("a chat turn: %s; moeppc --serve with the template's ids %s: %s" % (a, want_ids, ref))
    # the next turn, the conversation sent whole: its first turn's positions come from the caches
    conv = TURN1 + [{"role": "assistant", "content": ch["message"]["content"] or "x"},
                    {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": " more"}]}]
    b = chat(port, {"messages": conv, "max_tokens": 4})
    want2 = mistral_ids(conv[:2] + [{"role": "user", "content": "one more"}])
    ref2 = serve_alone({"ids": want2, "max_tokens": 4})
    if b["choices"][0]["message"]["content"] != ref2["text"] or b["usage"]["prompt_tokens"] != len(want2) or \
            b["usage"]["prompt_tokens_details"]["cached_tokens"] < len(want_ids):
        fail("the next turn: %s; moeppc --serve with %s: %s" % (b, want2, ref2))
    # OpenAI's presence and frequency penalties and logit biases passed on: moeppc's answer with them
    # (which differs from the greedy one without: this tiny model repeats itself)
    pen = {"presence_penalty": 2, "frequency_penalty": 1.5, "logit_bias": {"5": 1.5, "9": -100}}
    c = chat(port, dict(pen, messages=TURN1, max_tokens=12))
    ref3 = serve_alone(dict(pen, ids=want_ids, max_tokens=12))
    if c["choices"][0]["message"]["content"] != ref3["text"] or \
            ref3["ids"] == serve_alone({"ids": want_ids, "max_tokens": 12})["ids"]:
        fail("penalties: %s; moeppc --serve with them %s" % (c, ref3))
    forced = serve_alone({"ids": want_ids, "max_tokens": 3, "logit_bias": {"7": 100}})
    if forced["ids"] != [7, 7, 7]:
        fail("a bias of 100 on token 7: %s" % forced)
    # streamed: the role first, the deltas joining to the answer, the end, the usage last
    status, chunks = post(port, {"messages": TURN1, "max_tokens": 5, "stream": True,
                                 "stream_options": {"include_usage": True}})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    if status != 200 or deltas[0] != {"role": "assistant", "content": ""} or deltas[-1] != {} or \
            "".join(d.get("content", "") for d in deltas) != ref["text"] or \
            chunks[-1]["choices"] != [] or chunks[-1]["usage"]["completion_tokens"] != 5 or \
            any(c["object"] != "chat.completion.chunk" for c in chunks) or \
            [c["choices"][0]["finish_reason"] for c in chunks[:-1]] != [None] * (len(chunks) - 2) + ["length"]:
        fail("a chat stream: %d %s; not streamed %r" % (status, chunks, ref["text"]))
    # completions' "text_offset" with a tokenizer: where each token's text begins in the choice's text
    # (the prompt echoed, <s> giving none), in characters: at every token after one that is no byte
    # piece, the length of sentencepiece's decoding of the ids before it; streamed, the same
    PROMPT = "the city of the world"
    body = {"prompt": PROMPT, "max_tokens": 12, "logprobs": 1, "echo": True, "temperature": 0}
    status, whole = post(port, body, "/v1/completions")
    ch = whole["choices"][0] if status == 200 else fail("text_offset: %d %s" % (status, whole))
    every = [BOS] + sp.encode(PROMPT) + ch["token_ids"]
    every = [t if t < sp.GetPieceSize() else EOS for t in every]  # (ids past the pieces: no text, as </s>)
    offs, texts = ch["logprobs"]["text_offset"], [sp.decode(every[:j]) for j in range(len(every))]
    if texts[len(every) - 12] != PROMPT or not ch["text"].startswith(PROMPT) or len(offs) != len(every) or \
            offs != sorted(offs) or offs[-1] > len(ch["text"]) or \
            any(offs[j] != len(texts[j]) for j in range(len(every)) if j == 0 or not sp.IsByte(every[j - 1])):
        fail("text_offset: %s; ids %s, the text before each %s" % (ch, every, texts))
    status, chunks = post(port, dict(body, stream=True), "/v1/completions")
    streamed = [o for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                for o in c["choices"][0]["logprobs"]["text_offset"]]
    if streamed != offs or "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) != ch["text"]:
        fail("text_offset streamed: %s; not streamed %s" % (chunks, ch))
    # bad requests: 400 with the reason (the template's own included)
    for body, reason in (({"messages": [{"role": "assistant", "content": "x"}]}, "roles must alternate"),
                         ({"messages": []}, '"messages"'), ({"messages": [{"role": "user"}]}, '"messages"[0]'),
                         ({"messages": TURN1, "top_logprobs": 2}, 'needs "logprobs"'),
                         ({"messages": TURN1, "logprobs": True, "top_logprobs": 21}, '"top_logprobs"'),
                         ({"messages": TURN1, "echo": True}, 'unknown field "echo"'),
                         ({"messages": TURN1, "max_tokens": 2, "max_completion_tokens": 3}, "differ"),
                         ({"messages": TURN1, "presence_penalty": 3}, "presence penalty 3: expected a number in"),
                         ({"messages": TURN1, "frequency_penalty": "x"}, '"frequency_penalty"'),
                         ({"messages": TURN1, "logit_bias": {"512": 1}}, '"logit_bias": "512"'),
                         ({"messages": TURN1, "logit_bias": {"5": 101}}, "logit bias 101 of token 5")):
        status, got = post(port, body)
        if status != 400 or reason not in got["error"]["message"]:
            fail("%s: %d %s, want 400 saying %r" % (body, status, got, reason))
finally:
    stop(server)
# --chat-template with a plain Jinja file (ChatML's form, special tokens as text): its text, no <s> added;
# its block tags on lines of their own, indented, as Zephyr's are: trim_blocks and lstrip_blocks take
# those lines out (this tokenizer keeps newlines and spaces)
with open(os.path.join(work, "chatml.jinja"), "w") as f:
    f.write("{% for m in messages %}\n<|{{ m['role'] }}|> {{ m['content'] }}\n  {% endfor %}\n<|assistant|>")
server, port = start(RUN, ["--chat-template", os.path.join(work, "chatml.jinja")])
try:
    c = chat(port, {"messages": TURN1, "max_tokens": 3})
finally:
    stop(server)
want3 = sp.encode("<|user|> the city of the world\n<|assistant|>")
ref3 = serve_alone({"ids": want3, "max_tokens": 3})
if c["choices"][0]["message"]["content"] != ref3["text"] or c["usage"]["prompt_tokens"] != len(want3):
    fail("--chat-template FILE: %s; moeppc --serve with %s: %s" % (c, want3, ref3))
# a template that fails on a request's messages (not by raise_exception): a reason, not a dead thread
sys.path.insert(0, os.path.join(SRC, "examples/serve_http"))
import moeppc_http  # noqa: E402
with open(os.path.join(work, "bad.jinja"), "w") as f:
    f.write("{{ messages[0]['content'] + 1 }}")
try:
    moeppc_http.ChatTemplate(os.path.join(work, "bad.jinja")).render(TURN1)
    fail("a template adding a number to a string rendered")
except ValueError as e:
    if "the chat template: TypeError" not in str(e):
        fail("a failing template: %s" % e)
# no template anywhere: the chat endpoint says so (404), completions still served
os.remove(os.path.join(work, "tok/tokenizer_config.json"))
server, port = start(RUN)
try:
    status, got = post(port, {"messages": TURN1})
    status2, _ = post(port, {"prompt": "the city", "max_tokens": 1}, "/v1/completions")
finally:
    stop(server)
if status != 404 or "--chat-template" not in got["error"]["message"] or status2 != 200:
    fail("no template: %d %s, completions %d" % (status, got, status2))
print("serve_chat: a turn as moeppc's answer to the template's ids (tokenized as Hugging Face does), the next turn "
      "from the caches, streamed the same with the usage last, completions' text_offset as sentencepiece decodes, "
      "8 bad requests refused, a failing template's reason, "
      "--chat-template FILE, no template 404")
