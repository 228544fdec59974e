"""Cases for tokenizer_check: SentencePiece models (BPE and unigram) trained here by the sentencepiece library,
and what the library itself encodes and decodes with them (the reference moeppc's tokenizer.c must
match byte for byte).

usage: tokenizer_cases.py OUTDIR  ->  OUTDIR/*.model, OUTDIR/cases.txt
cases.txt: "model PATH SIZE BOS EOS", then for it "enc HEX N ID..." (text -> ids), "spc HEX N ID..."
(text -> ids, the control and unknown pieces' text in it those pieces, as Hugging Face's tokenizers
split special tokens out and encode the text between on its own: what a chat template writes) and
"dec N ID... HEX" (ids -> text) and "hold N ID... HEX" (ids -> text held, as streaming has it before
the next id: a last unfinished UTF-8 character of byte pieces left out); HEX is the text's bytes in
hex, "-" when empty."""
import os
import random
import sys

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "oracle"))
from serve_text import encode_special, unfinished  # noqa: E402  (the reference of special texts; what of a
# byte run's end waits for more)

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = random.Random(20261201)

WORDS = ("the of and to in is was for that with as on by he at from his it an were are which this be or has "
         "had not but first one their its new after who they have her she two been other when there all during "
         "into school time may years more most only over city some world would where later up such used many "
         "can state about national out known university united then made").split()
EXOTIC = ["eeee", "ooooo", "llll", "ssssss", "....", "café", "naïve", "日本語", "über", "😀", "ＡＢＣ", "ﬁne", "①②", "e\u0301", "Ωmega", "\u3000x", "ｶﾀｶﾅ"]


def sentence():
    ws = [rng.choice(WORDS) for _ in range(rng.randint(1, 14))]
    if rng.random() < 0.3:
        ws.insert(rng.randint(0, len(ws)), str(rng.randint(0, 99999)))
    if rng.random() < 0.25:
        ws.insert(rng.randint(0, len(ws)), rng.choice(EXOTIC))
    return " ".join(ws) + rng.choice([".", ",", "!", "?", "", ";"])


with open(os.path.join(out, "corpus.txt"), "w") as f:
    f.write("\n".join(sentence() for _ in range(3000)))


def train(name, **kw):
    prefix = os.path.join(out, name)
    kw.setdefault("model_type", "bpe")
    spm.SentencePieceTrainer.train(input=os.path.join(out, "corpus.txt"), model_prefix=prefix,
                                   character_coverage=0.9995, minloglevel=2, **kw)
    return prefix + ".model"


# A character map of a few rules, multi-character keys and replacements included.
rules = os.path.join(out, "rules.tsv")
with open(rules, "w") as f:
    for src, dst in [("FF21", "41"), ("FB01", "66 69"), ("3000", "20"), ("61 62", "58"), ("2460", "31"), ("E9", "65 301"),
                     ("9", "20"), ("78 79 7A", "")]:
        f.write(f"{src}\t{dst}\n")

LLAMA = dict(byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
             remove_extra_whitespaces=False, split_digits=True)
models = [
    train("llama", vocab_size=400, **LLAMA),                          # LLaMA's settings (the released checkpoint's)
    train("nfkc", vocab_size=300, user_defined_symbols=["<mask>", "[SEP]", "foo"]),  # defaults: NFKC map, extra spaces removed, <unk>
    train("suffix", vocab_size=350, byte_fallback=True, treat_whitespace_as_suffix=True, control_symbols=["<ctl>"]),
    train("rules", vocab_size=400, byte_fallback=True, normalization_rule_tsv=rules),  # a small map of its own
    train("unigram", vocab_size=400, model_type="unigram"),                      # T5's kind: NFKC, <unk>
    train("unigram_llama", vocab_size=450, model_type="unigram", user_defined_symbols=["<mask>", "foo"],
          **LLAMA),                                                            # byte fallback, user-defined pieces
    train("noprefix", vocab_size=320, byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity",
          remove_extra_whitespaces=False, bos_id=-1, eos_id=1, unk_id=2, pad_id=0),
]

# A model whose merged pieces are partly marked UNUSED: encoding splits them back into what formed them.
m = pb.ModelProto()
with open(models[0], "rb") as f:
    m.ParseFromString(f.read())
merged = [p for p in m.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL and len(p.piece) > 1]
for p in rng.sample(merged, len(merged) // 4):
    p.type = pb.ModelProto.SentencePiece.UNUSED
unused = os.path.join(out, "unused.model")
with open(unused, "wb") as f:
    f.write(m.SerializeToString())
models.append(unused)


def texts():
    fixed = ["", " ", "  ", "a", " leading", "trailing ", "  two  spaces  inside  ", "\ttab\t", "new\nline", "x\r\ny",
             "ＡＢＣ full width", "ﬁ ligature", "① circled", "e\u0301 combining", "<mask> the [SEP] foo", "<s> </s> <unk>",
             "<0x41>", "▁already▁escaped", "\u3000ideographic space", "emoji 😀😀 and 🧪", "\x00nul", "12345 67890", "abab xyz ab", "xyzxyz",
             " ".join(WORDS) * 3, "eee", "eeeee", "ooo", "lllllll", "sssss", "...", ".....", "aaaa"]
    bad = [b"ab\xff\xfe cd", b"\xe6\x97", b"\xe6\x97 x", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80",
           b"ok \xf0\x9f\x98", bytes(range(256))]
    out_ = [t.encode("utf-8") for t in fixed] + bad
    for _ in range(250):
        s = " ".join(sentence() for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.2:
            s = s.replace(" ", rng.choice(["  ", "\t", " \n ", "   "]))
        if rng.random() < 0.15:
            s = " " * rng.randint(1, 3) + s + " " * rng.randint(0, 3)
        b = s.encode("utf-8")
        if rng.random() < 0.1:
            k = rng.randint(0, len(b))
            b = b[:k] + bytes([rng.randint(128, 255)]) + b[k:]
        out_.append(b)
    return out_


def special_texts(specials):
    """Texts as chat templates write them, the model's special pieces among the words."""
    fixed = ["<s>[INST] the city [/INST] the world</s>[INST] one more [/INST]", "<s><s></s>", "a<unk>b", "<s",
             "</s >", " <s> ", "<s>\n", "x<ctl>y<ctl>", "<</s>>", ""]
    out_ = [t.encode("utf-8") for t in fixed]
    for _ in range(60):
        parts = [rng.choice(specials) if rng.random() < 0.4 else sentence() for _ in range(rng.randint(1, 6))]
        out_.append(rng.choice(["", " ", "\n"]).join(parts).encode("utf-8"))
    return out_


def hexs(b):
    return b.hex() if b else "-"


with open(os.path.join(out, "cases.txt"), "w") as f:
    for path in models:
        sp = spm.SentencePieceProcessor(model_file=path)
        n = sp.get_piece_size()
        f.write(f"model {path} {n} {sp.bos_id()} {sp.eos_id()}\n")
        for t in texts():
            ids = sp.encode(t)
            f.write(f"enc {hexs(t)} {len(ids)} {' '.join(map(str, ids))}\n")
        specials = [sp.id_to_piece(i) for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
        specials = [x for x in specials if x]
        for t in special_texts(specials or ["<s>"]):
            ids = encode_special(sp, specials, t)
            f.write(f"spc {hexs(t)} {len(ids)} {' '.join(map(str, ids))}\n")
        byte_ids = [i for i in range(n) if sp.is_byte(i)]
        held_cases = []
        for k in range(300):
            pool = byte_ids if byte_ids and k % 3 == 0 else range(n)
            ids = [rng.choice(pool) for _ in range(rng.randint(0, 24))]
            if k % 5 == 0 and ids:
                ids[0] = rng.choice([sp.bos_id(), sp.unk_id(), ids[0]]) if sp.bos_id() >= 0 else ids[0]
            text = sp.decode(ids).encode("utf-8", "surrogateescape")
            f.write(f"dec {len(ids)} {' '.join(map(str, ids))} {hexs(text)}\n")
            if byte_ids:
                held_cases.append(ids)
        # decoding held (as streaming has it before the next id): all but a last run of byte pieces'
        # unfinished UTF-8 character; bytes no completion makes one (a lead 0xf7, 0xe0 0x80) are not held
        b = lambda *v: [sp.piece_to_id("<0x%02X>" % x) for x in v]
        for ids in (held_cases + [b(0xf7), b(0xe0, 0x80), b(0xe0, 0xa0), b(0xf4, 0x90), b(0xf4, 0x8f), b(0xc0), b(0xc1),
                                  b(0xc2), b(0xe6, 0x97), b(0xf0, 0x9f, 0x98), b(0xed, 0xa0), b(0xed, 0x9f), b(0xf5),
                                  b(0x41, 0xf0), b(0xe6, 0x97, 0xe6), b(0x97, 0xe6)] if byte_ids else []):
            run = []
            for i in reversed(ids):
                if not sp.is_byte(i):
                    break
                run.insert(0, int(sp.id_to_piece(i)[3:5], 16))
            kept = ids[:len(ids) - unfinished(run)]
            f.write(f"hold {len(ids)} {' '.join(map(str, ids))} {hexs(sp.decode(kept).encode('utf-8', 'surrogateescape'))}\n")
