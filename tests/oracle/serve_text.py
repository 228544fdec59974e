"""serve_text.py: the text of --serve's answers and where "stop" strings end them, written from the
README's *Decoding* section and runtime.h (not from runtime/tokenizer.c), with the sentencepiece
library's decoding as the reference for the text itself; and the SentencePiece models random_models.py
gives its serve paths (trained here by that library, once a run).

The rules: a sequence's text is what sentencepiece decodes from its ids, an id past the tokenizer's
pieces decoding as a control piece does (nothing; it ends a run of byte pieces). An answer's text is
the text of its whole sequence after the text of the context before its first generated token; where
that context ends inside a UTF-8 sequence of byte pieces (a lead byte and its continuations, waiting
for the rest), those bytes belong to the answer's text, since decoding holds them until the next
token says. Decoding holds such an unfinished end back while it streams, and a "stop" string is
searched for in that text as each token adds to it: the first token after which one begins in it
ends the answer, whose text ends where the earliest of them begins."""
import json
import os
import random
import re

try:
    import sentencepiece as spm
except ImportError:  # the serve paths then run without a tokenizer
    spm = None

LLAMA = dict(byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
             remove_extra_whitespaces=False)
# name: (vocabulary size, the trainer's options). Random models use those no larger than their own.
TOKENIZERS = {
    "bpe24": (24, dict(model_type="bpe")),
    "uni40": (40, dict(model_type="unigram")),
    "bpe100": (100, dict(model_type="bpe", split_digits=True)),
    "llama300": (300, dict(model_type="bpe", split_digits=True, **LLAMA)),
    "noprefix320": (320, dict(model_type="bpe", byte_fallback=True, add_dummy_prefix=False,
                              normalization_rule_name="identity", remove_extra_whitespaces=False)),
    "unillama340": (340, dict(model_type="unigram", user_defined_symbols=["<mask>"], **LLAMA)),
}
LETTERS = "abcdefghilmnorst"


def available():
    return spm is not None


def train(folder):
    """Every model of TOKENIZERS in folder (trained once; the same corpus each time): {name: path}."""
    os.makedirs(folder, exist_ok=True)
    corpus = os.path.join(folder, "corpus.txt")
    if not os.path.exists(corpus):
        rng = random.Random(20261206)
        words = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 6))) for _ in range(80)]
        with open(corpus + ".tmp", "w") as f:
            for _ in range(2000):
                f.write(" ".join(rng.choice(words) for _ in range(rng.randint(1, 10))) + rng.choice(".,!") + "\n")
        os.replace(corpus + ".tmp", corpus)
    paths = {}
    for name, (size, kw) in TOKENIZERS.items():
        prefix = os.path.join(folder, name)
        if not os.path.exists(prefix + ".model"):
            spm.SentencePieceTrainer.train(input=corpus, model_prefix=prefix, vocab_size=size, character_coverage=1.0,
                                           minloglevel=2, **kw)
        paths[name] = prefix + ".model"
    return paths


def _seq_len(b):
    """The length of the UTF-8 sequence lead byte b begins (0: not a lead byte)."""
    return 1 if b < 0x80 else 2 if 0xc2 <= b < 0xe0 else 3 if 0xe0 <= b < 0xf0 else 4 if 0xf0 <= b <= 0xf4 else 0


def _may_continue(lead, i, b):
    """Whether b may be byte i (1-based past the lead) of a sequence lead begins (no overlong forms,
    no surrogates, nothing past U+10FFFF)."""
    if b & 0xc0 != 0x80:
        return False
    if i == 1:
        return not ((lead == 0xe0 and b < 0xa0) or (lead == 0xed and b >= 0xa0) or (lead == 0xf0 and b < 0x90)
                    or (lead == 0xf4 and b >= 0x90))
    return True


def unfinished(run):
    """How many of the last bytes of run (a run of byte pieces) begin a UTF-8 sequence still waiting
    for its rest (0: none), as a decoder reading it from its start sees them."""
    i = 0
    while i < len(run):
        k = _seq_len(run[i])
        ok = k > 0 and all(_may_continue(run[i], j, run[i + j]) for j in range(1, min(k, len(run) - i)))
        if ok and i + k > len(run):
            return len(run) - i
        i += k if ok else 1
    return 0


class Text:
    """A tokenizer's texts of ids, as the rules above have them."""

    def __init__(self, path):
        self.sp = spm.SentencePieceProcessor(model_file=path)
        self.n = self.sp.get_piece_size()
        self.control = next(i for i in range(self.n) if self.sp.is_control(i))

    def specials(self):
        """The pieces a chat template's text names by their text (encode_special): control and unknown."""
        return [x for x in (self.sp.id_to_piece(i) for i in range(self.n)
                            if self.sp.is_control(i) or self.sp.is_unknown(i)) if x]

    def chat_entry(self, i):
        """Token i as a chat completion's "logprobs" give it (README, *Decoding*): its string (the piece,
        U+2581 a space; a byte piece's byte, \\xXX where it is no character alone; past the pieces
        "token_id:N") and its bytes."""
        if i >= self.n:
            b = ("token_id:%d" % i).encode()
        elif self.sp.is_byte(i):
            b = bytes([int(self.sp.id_to_piece(i)[3:5], 16)])
        else:
            b = self.sp.id_to_piece(i).replace("\u2581", " ").encode()
        return b.decode("utf-8", "backslashreplace"), list(b)

    def _ids(self, ids):
        return [i if i < self.n else self.control for i in ids]

    def decode(self, ids):
        return self.sp.decode(self._ids(ids))

    def _pending(self, ids):
        """How many of ids' last tokens are byte pieces of an unfinished UTF-8 sequence."""
        run = []
        for i in reversed(self._ids(ids)):
            if not self.sp.is_byte(i):
                break
            run.insert(0, int(self.sp.id_to_piece(i)[3:5], 16))
        return unfinished(run)

    def offsets(self, ids):
        """Where each of ids' texts begins in their whole text, in characters: the length of the text
        of the ids before it, without an unfinished end (as streaming has printed it when it comes;
        a byte piece inside a character points where that character begins)."""
        return [len(self.decode(ids[:i - self._pending(ids[:i])])) for i in range(len(ids))]

    def answer(self, ctx, gen, held=False):
        """The text of gen after ctx (held: without an unfinished end, as streaming has it before the
        next token), or None where the context's text is not a prefix of the whole's (no rule says what
        the answer's is then)."""
        head = self.decode(ctx[:len(ctx) - self._pending(ctx)])
        seq = ctx + gen
        whole = self.decode(seq[:len(seq) - self._pending(seq)] if held else seq)
        return whole[len(head):] if whole.startswith(head) else None

    def stop(self, ctx, gen, strings):
        """Where "stop" strings end gen after ctx: (the tokens kept, the answer's text), or (None, None)
        when none begins in its text; None where answer() has no text."""
        for g in range(1, len(gen) + 1):
            t = self.answer(ctx, gen[:g], held=True)
            if t is None:
                return None
            at = [t.find(s) for s in strings if s in t]
            if at:
                return g, t[:min(at)]
        return None, None


def encode_special(sp, specials, t):
    """Hugging Face's tokenization of a chat template's text (bytes t): split at its special pieces
    (the longest first where several begin at one place), each piece its id and each other part
    sentencepiece's encoding of it alone; no beginning-of-sequence id added."""
    ids = []
    if not specials:
        return sp.encode(t)
    alt = "|".join(re.escape(x.encode("utf-8")).decode("latin-1") for x in sorted(specials, key=len, reverse=True))
    for k, part in enumerate(re.split(("(" + alt + ")").encode("latin-1"), t)):
        if k % 2:
            ids.append(sp.piece_to_id(part.decode("utf-8")))
        elif part:
            ids += sp.encode(part)
    return ids


# Chat templates as checkpoints ship them (Mistral-Instruct's, Llama-2-chat's, Zephyr's: its blocks on
# lines of their own, which trim_blocks and lstrip_blocks take out) and one of Jinja's other forms
# (whitespace control, a namespace, tojson, the content trimmed): the roles each takes.
CHAT_TEMPLATES = {
    "mistral": (["user", "assistant"],
                "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
                "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
                "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
                "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
                "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
                "roles are supported!') }}{% endif %}{% endfor %}"),
    "llama2": (["system", "user", "assistant"],
               "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
               "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
               "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
               "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation "
               "roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and "
               "system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + "
               "message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
               "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
               "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
               "{% endfor %}"),
    "zephyr": (["system", "user", "assistant"],
               "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + "
               "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + "
               "message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
               "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
               "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"),
    "tojson": (["system", "user", "assistant"],
               "{%- set ns = namespace(turns=0) -%}\n{%- for m in messages -%}\n"
               "  {%- if m['role'] != 'system' %}{% set ns.turns = ns.turns + 1 %}{% endif -%}\n"
               "  {{- bos_token + m['role'] + ' ' + (m['content'] | trim | tojson) + eos_token + '\\n' -}}\n"
               "{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
               "  {{- bos_token + 'assistant ' + ns.turns | string + ':' -}}\n{%- endif -%}"),
}
CHAT_WORDS = ["a", "the", "list", "orb", "mint", "tool", "rest", ",", ".", "!", "\n", "  ", "</s>", "<s>", "<unk>",
              "[INST]", "<mask>", "é", "中", "🙂", '"q"', "\\"]


def draw_messages(rng, template):
    """A conversation for a template: an optional system message (where it takes one), then turns
    of user and assistant, ending with the user's; in one in ten a wrong order (the template says
    why, or renders what it renders)."""
    roles, _ = CHAT_TEMPLATES[template]
    msgs = [{"role": "system"}] if "system" in roles and rng.random() < 0.4 else []
    msgs += [{"role": ("user", "assistant")[i % 2]} for i in range(2 * rng.randint(0, 2) + 1)]
    if rng.random() < 0.1:
        rng.shuffle(msgs)
    for m in msgs:
        m["content"] = "".join(rng.choice(CHAT_WORDS) if rng.random() < 0.3 else " " + rng.choice(CHAT_WORDS[:7])
                               for _ in range(rng.randint(0, 6)))
    return msgs


LINE_ODD = ["\t", "\r", "\x00", "\x01", "\x7f", "+", "#", "@", "\\n", "x\\x41", "\\"]


def draw_line(rng):
    """A --prompts line's text: 1 to 8 words, chat templates' (CHAT_WORDS: special pieces' text, line
    breaks, runs of spaces, é 中 🙂, quotes) and LINE_ODD's (tabs, carriage returns, NUL and other
    control characters, + # @, a backslash and what looks like an escape) a quarter each."""
    def word():
        r = rng.random()
        return rng.choice(CHAT_WORDS) if r < 0.25 else rng.choice(LINE_ODD) if r < 0.5 else " " + rng.choice(CHAT_WORDS[:7])
    return "".join(word() for _ in range(rng.randint(1, 8)))


# The escapes with a name, in --prompts lines and --quiet answers alike (README, *Decoding*)
NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape_line(rng, t):
    """t written as a --prompts line (README, *Decoding*: \\n \\t \\r \\\\ and \\xHH for a byte): a
    backslash, line break and carriage return always escaped, a tab or any other byte now and then (a
    character as the \\xHH of its UTF-8 bytes; a first "+", "#" or "@", which would make the line a
    next turn, a comment or, after a +, another line's turn, always)."""
    out = []
    for k, ch in enumerate(t):
        named = NAMED_ESCAPES.get(ch)
        if (k == 0 and ch in "+#@") or rng.random() < 0.15 or (ch < " " and not named):
            out.append("".join("\\x%02x" % b for b in ch.encode("utf-8")))
        elif named and (ch != "\t" or rng.random() < 0.5):
            out.append(named)
        else:
            out.append(ch)
    return "".join(out)


def escape_answer(t):
    """A --quiet answer's text as moeppc writes it on its line: \\\\ \\n \\t \\r, other bytes below 0x20 and
    0x7f as \\xHH, everything else as it is."""
    return "".join(NAMED_ESCAPES.get(ch) or ("\\x%02x" % ord(ch) if ch < " " or ch == "\x7f" else ch) for ch in t)


def render_chat(template, messages, bos, eos):
    """The template's text for messages as transformers' apply_chat_template renders it (Jinja's
    sandbox, trim_blocks, lstrip_blocks, loop controls, raise_exception, tojson,
    add_generation_prompt), or raise ValueError with the template's reason."""
    import jinja2
    import jinja2.ext
    import jinja2.sandbox

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(CHAT_TEMPLATES[template][1]).render(
            messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos, unk_token="<unk>")
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(str(e))


def chat_available():
    try:
        import jinja2.sandbox  # noqa: F401
        return spm is not None
    except ImportError:
        return False
