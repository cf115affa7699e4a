#!/usr/bin/python3
"""Example Python Thrift client for deepshard-coordinator (python3-thrift from Debian).

The client code is generated at build time into BUILD/gen/py (target deepshard_thrift_py):
    /usr/bin/python3 coordinator/examples/thrift_client.py --gen BUILD/gen/py \
        --server 127.0.0.1:9090 --tokens 0,4011,4000 --max-tokens 8 [--stream]
Prints one JSON object {"tokens", "text", "finish_reason"}; exit 2/3/4 on InvalidRequest /
Unavailable / Overloaded.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen", required=True, help="directory holding the generated deepshard_rpc package")
    ap.add_argument("--server", default="127.0.0.1:9090")
    ap.add_argument("--prompt")
    ap.add_argument("--tokens", help="comma-separated token ids")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--api-key")
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--stream", action="store_true", help="Submit + Poll instead of Generate")
    args = ap.parse_args()

    sys.path.insert(0, args.gen)
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TSocket, TTransport
    from deepshard_rpc import Deepshard
    from deepshard_rpc.ttypes import (GenerateRequest, SamplingParams, InvalidRequest, Unavailable,
                                      Overloaded)

    host, port = args.server.rsplit(":", 1)
    transport = TTransport.TBufferedTransport(TSocket.TSocket(host, int(port)))
    client = Deepshard.Client(TBinaryProtocol.TBinaryProtocol(transport))
    req = GenerateRequest(max_tokens=args.max_tokens,
                          sampling=SamplingParams(temperature=args.temperature),
                          ignore_eos=args.ignore_eos, api_key=args.api_key)
    if args.tokens:
        req.prompt_tokens = [int(t) for t in args.tokens.split(",")]
    else:
        req.prompt = args.prompt or ""
    transport.open()
    try:
        if not args.stream:
            r = client.Generate(req)
            out = {"tokens": r.tokens, "text": r.text, "finish_reason": r.finish_reason}
        else:
            rid = client.Submit(req)
            tokens, text, offset = [], "", 0
            while True:
                p = client.Poll(rid, offset, 1000, args.api_key or "")
                tokens += p.tokens
                text += p.text
                offset = p.next_offset
                if p.finished:
                    out = {"tokens": tokens, "text": text, "finish_reason": p.finish_reason}
                    break
        print(json.dumps(out))
    except InvalidRequest as e:
        print(f"InvalidRequest ({e.field}): {e.message}", file=sys.stderr)
        return 2
    except Unavailable as e:
        print(f"Unavailable: {e.message}", file=sys.stderr)
        return 3
    except Overloaded as e:
        print(f"Overloaded: {e.message}", file=sys.stderr)
        return 4
    finally:
        transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
