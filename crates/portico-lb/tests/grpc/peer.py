"""A real gRPC peer for Portico's tests (Debian's python3-grpcio, no generated code: methods
take and return raw bytes).

  peer.py server            serves test.Echo and grpc.health.v1.Health on h2c; prints its port
  peer.py client ADDR CA NAME   calls through ADDR over TLS (CA's root, NAME as the TLS name);
                            prints one JSON line with what each call returned
  peer.py serving ADDR 0|1  tells the server (directly, h2c) to answer NOT_SERVING / SERVING
"""
import json
import sys
from concurrent import futures

import grpc

ident = lambda b: b
state = {"serving": True}


def say(req, ctx):
    ctx.set_trailing_metadata((("x-echo-len", str(len(req))),))
    return req[::-1]


def chat(requests, ctx):
    for m in requests:
        yield m.upper()


def fail(req, ctx):
    ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "no entry")


def set_serving(req, ctx):
    state["serving"] = req == b"1"
    return b""


def check(req, ctx):
    # grpc.health.v1.HealthCheckResponse{status: SERVING (1) or NOT_SERVING (2)}
    return b"\x08\x01" if state["serving"] else b"\x08\x02"


def unary(f):
    return grpc.unary_unary_rpc_method_handler(f, request_deserializer=ident, response_serializer=ident)


def server():
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    s.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("test.Echo", {
            "Say": unary(say),
            "Fail": unary(fail),
            "SetServing": unary(set_serving),
            "Chat": grpc.stream_stream_rpc_method_handler(chat, request_deserializer=ident, response_serializer=ident),
        }),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": unary(check)}),
    ))
    port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    print(port, flush=True)
    s.wait_for_termination()


def client(addr, ca, name):
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    ch = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", name)])
    out = {}
    try:
        reply, call = ch.unary_unary("/test.Echo/Say", request_serializer=ident, response_deserializer=ident).with_call(b"hello", timeout=10)
        out["say"] = reply.decode()
        out["trailer"] = dict(call.trailing_metadata()).get("x-echo-len")
        chat = ch.stream_stream("/test.Echo/Chat", request_serializer=ident, response_deserializer=ident)
        out["chat"] = [m.decode() for m in chat(iter([b"one", b"two", b"three"]), timeout=10)]
    except grpc.RpcError as e:
        out["error"] = e.code().name
        out["details"] = e.details()
    try:
        ch.unary_unary("/test.Echo/Fail", request_serializer=ident, response_deserializer=ident)(b"x", timeout=10)
    except grpc.RpcError as e:
        out["fail_code"] = e.code().name
        out["fail_details"] = e.details()
    print(json.dumps(out), flush=True)


def serving(addr, flag):
    ch = grpc.insecure_channel(addr)
    ch.unary_unary("/test.Echo/SetServing", request_serializer=ident, response_deserializer=ident)(flag.encode(), timeout=10)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server()
    elif mode == "client":
        client(*sys.argv[2:5])
    elif mode == "serving":
        serving(*sys.argv[2:4])
