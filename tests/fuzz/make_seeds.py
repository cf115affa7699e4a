#!/usr/bin/python3
"""Writes the seed corpora of the libFuzzer targets into tests/fuzz/seeds/<target>/ (committed; rerun
after a format changes). Usage: /usr/bin/python3 tests/fuzz/make_seeds.py BUILD_DIR   (BUILD_DIR/gen/py holds the generated
Thrift Python package; BUILD_DIR/bin/deepshard writes the plans)."""
import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "seeds")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- http_request: raw HTTP requests and bare bodies (first byte: 0 completions, 1 chat) ----------
CHAT = {"model": "m", "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "sunny"}, {"role": "user", "content": "中文 and code: x = [1, 2]"}],
    "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7,
    "stop": ["\n\n", "END"], "stop_token_ids": [1, 2], "logprobs": True, "top_logprobs": 3,
    "stream": True, "stream_options": {"include_usage": True}, "response_format": {"type": "text"},
    "frequency_penalty": 0.5, "presence_penalty": -0.5, "repetition_penalty": 1.1, "timeout": 30,
    "logit_bias": {}, "tools": [], "user": "u", "n": 1}
COMPLETION = {"model": "m", "prompt": [0, 4011, 4000, 17], "max_tokens": 4, "logprobs": 2, "echo": False,
              "ignore_eos": True, "return_token_ids": True, "best_of": 1, "stop": "x"}
COMPLETION_TEXT = {"model": "m", "prompt": ["Hello world"], "max_tokens": 16, "temperature": 0}


def http(path, body, extra=""):
    b = json.dumps(body, ensure_ascii=False).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer sk-x\r\n{extra}Content-Length: {len(b)}\r\n\r\n").encode()
    return head + b


def chunked(path, body):
    b = json.dumps(body).encode()
    mid = len(b) // 2
    head = (f"POST {path}?x=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            f"Expect: 100-continue\r\n\r\n").encode()
    return head + b"%x\r\n" % mid + b[:mid] + b"\r\n" + b"%x\r\n" % (len(b) - mid) + b[mid:] + b"\r\n0\r\n\r\n"


write("http_request", "chat.http", http("/v1/chat/completions", CHAT))
write("http_request", "completion.http", http("/v1/completions", COMPLETION, "Connection: keep-alive\r\n"))
write("http_request", "completion_chunked.http", chunked("/v1/completions", COMPLETION_TEXT))
write("http_request", "get_models.http", "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
write("http_request", "chat.body", b"\x01" + json.dumps(CHAT, ensure_ascii=False).encode())
write("http_request", "completion.body", b"\x00" + json.dumps(COMPLETION).encode())
write("http_request", "completion_text.body", b"\x00" + json.dumps(COMPLETION_TEXT).encode())

# ---- control: written by the protocol's own encoder, build/tests/write_control_seeds DIR
# (tests/control/protocol_samples.cc); fuzz_control_seeds_test fails while the committed ones are stale.

# ---- tokenizer_json: small byte-level BPE files (+ "\n@@config@@\n" + tokenizer_config.json) -------
def byte_vocab():
    vocab, extra = {}, 0
    for b in range(256):
        printable = 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255
        cp = b if printable else 256 + extra
        extra += 0 if printable else 1
        vocab[chr(cp)] = b
    return vocab


def tokenizer_json(split=None, added=True):
    vocab = byte_vocab()
    merges = []
    nxt = 256
    for a, b in [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r")]:
        vocab[a + b] = nxt
        nxt += 1
        merges.append(f"{a} {b}")
    pre = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": split is None}
    if split is not None:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
    doc = {"version": "1.0", "normalizer": {"type": "Sequence", "normalizers": []}, "pre_tokenizer": pre,
           "decoder": {"type": "ByteLevel"},
           "model": {"type": "BPE", "dropout": None, "byte_fallback": False, "vocab": vocab, "merges": merges},
           "added_tokens": []}
    if added:
        doc["added_tokens"] = [
            {"id": nxt, "content": "<s>", "special": True, "normalized": False, "lstrip": False, "rstrip": False,
             "single_word": False},
            {"id": nxt + 1, "content": "</s>", "special": True, "normalized": False},
            {"id": nxt + 2, "content": "<|x|>", "special": False, "normalized": True}]
    return json.dumps(doc, ensure_ascii=False)


CONFIG = json.dumps({"add_bos_token": True, "bos_token": {"content": "<s>"}, "eos_token": "</s>"})
write("tokenizer_json", "gpt2_regex.json", tokenizer_json() + "\n@@config@@\n" + CONFIG)
write("tokenizer_json", "split_digits.json", tokenizer_json(r"\p{N}{1,3}") + "\n@@config@@\n" + CONFIG)
write("tokenizer_json", "no_added.json", tokenizer_json(added=False))

# ---- thrift: calls serialized with the generated Python client -----------------------------------
if len(sys.argv) > 1:
    build = sys.argv[1]
    sys.path.insert(0, os.path.join(build, "gen", "py"))
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TTransport
    from deepshard_rpc import Deepshard
    from deepshard_rpc.ttypes import ChatMessage, GenerateRequest, SamplingParams

    def call(fn):
        buf = TTransport.TMemoryBuffer()
        client = Deepshard.Client(TBinaryProtocol.TBinaryProtocol(buf))
        fn(client)
        return buf.getvalue()

    sp = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.0, repetition_penalty=1.1,
                        frequency_penalty=0.5, presence_penalty=-0.5, seed=7)
    tok_req = GenerateRequest(prompt_tokens=[0, 4011, 4000], max_tokens=8, sampling=sp, stop=["\n"],
                              stop_token_ids=[1], ignore_eos=True, logprobs=3, timeout_ms=5000, api_key="k")
    chat_req = GenerateRequest(messages=[ChatMessage(role="system", content="Be brief."),
                                         ChatMessage(role="user", content="Hi 中文")], max_tokens=4)
    text_req = GenerateRequest(prompt="Hello world", max_tokens=2)
    write("thrift", "generate_tokens.bin", call(lambda c: c.send_Generate(tok_req)))
    write("thrift", "generate_chat.bin", call(lambda c: c.send_Generate(chat_req)))
    write("thrift", "submit_text.bin", call(lambda c: c.send_Submit(text_req)))
    write("thrift", "poll_cancel.bin", call(lambda c: (c.send_Poll(1, 0, 100, "k"), c.send_Cancel(1, "k"))))
    write("thrift", "tokenize.bin", call(lambda c: (c.send_Tokenize("Hello 中文", True, "k"),
                                                    c.send_Detokenize([0, 4011, 4000, 129279], "k"))))
    write("thrift", "info.bin", call(lambda c: (c.send_GetModelInfo(), c.send_Health(), c.send_GetStats())))

    # ---- plan: what `deepshard plan` writes for the tiny golden model -----------------------------
    model = os.path.join(SRC, "testdata", "golden", "tiny-bf16")
    for layout in ["pp=2,tp=2", "pp=1,tp=2,attn=dp", "pp=4,tp=1"]:
        out = subprocess.run([os.path.join(build, "bin", "deepshard"), "plan", "--model", model, "--layout", layout,
                              "--json"], check=True, capture_output=True, text=True).stdout
        write("plan", layout.replace("=", "").replace(",", "_") + ".json", json.dumps(json.loads(out)))
