#!/usr/bin/env python3
"""Writes the committed seed corpora, fuzz/corpus/<target>/, from the contract's examples
(shared protocols.md's examples; the vectors are read from tests/vectors) and the unit
tests' vectors. Run it from anywhere; it replaces only the files it names.

Codec targets take a split byte first (see fuzz/src/lib.rs `split_reads`: below 128 one cut
at that fraction, from 128 on reads of `byte - 127` bytes). Service targets take a program
of operations (see each target's `match ops.byte() % N`)."""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def vectors(name):
    """The hex column (the last) of a contract vector file in tests/vectors, in file order:
    read from there, so the seeds cannot drift from what the tests check."""
    path = os.path.join(HERE, "..", "tests", "vectors", name)
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip() and not line.startswith("#")]
    return [row[-1] for row in rows]


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# ---- ROOM ----
write("room_codec", "alias_crlf_then_chunk", b"\x00alice\r\nhello everyone")
write("room_codec", "alias_then_chunk_cut", b"\x40alice\nhello everyone")
write("room_codec", "utf8_alias_bytewise", b"\x80jos\xc3\xa9\n")
write("room_codec", "quotes", b"\x00both'\"\\ tab\there \x00\x7f\xff")
write("room_codec", "empty_alias_then_name", b"\x08\r\nbob")

ACCEPT, DATA, CLOSE, TIME = 0, 1, 2, 3


def data(slot, payload):
    assert len(payload) < 256
    return bytes([DATA, slot, len(payload)]) + payload


def time(ms):
    return bytes([TIME]) + struct.pack("<H", ms)


write("room_service", "chat", bytes([ACCEPT, 0, ACCEPT, 1]) + data(0, b"alice\n")
      + data(1, b"bo") + data(1, b"b\r\n") + data(0, b"hello") + data(1, b"o'neil says hi")
      + bytes([CLOSE, 1]) + data(0, b"bye"))
write("room_service", "handshake_timeout", bytes([ACCEPT, 0, ACCEPT, 1]) + data(0, b"\r\n")
      + data(1, b"carol") + time(4000) + time(2000) + data(0, b"late"))

# ---- BIN24 ----
VECTORS_BIN24 = vectors("bin24-frames.tsv") + [
    # an 8-byte SRC, no NUL (the codec's unit tests)
    "19000000010000006162636465666768626f62000000000078",
]


def bin24(kind, msg_id, src, dst, body):
    return struct.pack("<HHI8s8s", 24 + len(body), kind, msg_id, src, dst) + body


frames = [bytes.fromhex(v) for v in VECTORS_BIN24]
write("bin24_codec", "original_client_message", b"\x00" + frames[0])
write("bin24_codec", "answer_then_stored_bytewise", b"\x80" + frames[1] + frames[3])
write("bin24_codec", "server_answer_cut", b"\x20" + frames[2] + frames[0])
write("bin24_codec", "garbage_after_nul", b"\x00" + bin24(0, 9, b"al\x00xyz\x00\x00\x00", b"bob", b"x"))
write("bin24_codec", "eight_byte_name", b"\x00" + frames[4])
write("bin24_codec", "bad_length", b"\x00" + b"\x05\x04" + b"\x00" * 30)

STORE, NOTIFY, DATA2 = 4, 5, 6
write("bin24_service", "live_and_answer", bytes([ACCEPT, 0, ACCEPT, 1])
      + data(0, bin24(0, 1, b"alice", b"bob", b"hi bob")) + bytes([STORE, 2])
      + data(1, bin24(0, 1, b"bob", b"alice", b"hi alice")) + bytes([STORE, 2])
      + data(1, bin24(1, 1, b"bob", b"alice", b"200")) + data(0, bin24(1, 1, b"alice", b"bob", b"200"))
      + time(3500))
write("bin24_service", "offline_then_load", bytes([ACCEPT, 0])
      + data(0, bin24(0, 1, b"alice", b"carol", b"one") + bin24(0, 2, b"alice", b"carol", b"two"))
      + bytes([STORE, 2, STORE, 2, STORE, 2, ACCEPT, 2])
      + data(2, bin24(0, 7, b"carol", b"alice", b"back")) + bytes([STORE, 2, STORE, 2])
      + bytes([NOTIFY, 0, NOTIFY, 1, STORE, 0, CLOSE, 2]))
write("bin24_service", "ack_timeout", bytes([ACCEPT, 0, ACCEPT, 1])
      + data(1, bin24(0, 1, b"bob", b"nobody", b"x")) + data(0, bin24(0, 5, b"alice", b"bob", b"x"))
      + time(3100) + bytes([STORE, 1, STORE, 3]))

# ---- CCM ----
IDENTITY = bytes.fromhex(
    "43434d5c312e30204e6f74446566696e65640a53656e64446174653a2031302f31312f323032312031313b3136"
    "3b31390a4d6573736167652d456e636f64696e673a207574662d380a0a4a75616e446f75676c6173")
TOKEN1 = b"%032x" % 1
TOKEN2 = b"%032x" % 2


def ccm(kind, attrs, content):
    head = b"CCM\\1.0 " + kind + b"\n"
    for k, v in attrs:
        head += k + b": " + v + b"\n"
    return head + b"\n" + content


text = ccm(b"Text", [(b"User", TOKEN1), (b"Addressee", b"bob"), (b"Content-Length", b"2")], b"hi")
write("ccm_codec", "original_identity", b"\x00" + IDENTITY)
write("ccm_codec", "two_with_length_cut", b"\x30" + text + ccm(b"Connect", [(b"Content-Length", b"0")], b""))
write("ccm_codec", "crlf_bytewise", b"\x80" + b"ccm\\1.0 Identity\r\nMessage-Encoding: utf-16\r\n\r\nb\x00o\x00b\x00" + b"\x01")
write("ccm_codec", "http_get", b"\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n")

DATA_NO_BURST = 4
write("ccm_service", "identify_and_talk", bytes([ACCEPT, 0, ACCEPT, 1]) + data(0, IDENTITY)
      + data(1, ccm(b"NotDefined", [], b"bob")) + data(0, text)
      + data(1, ccm(b"Text", [(b"User", TOKEN2), (b"Addressee", b"*"), (b"Content-Length", b"3")], b"all"))
      + bytes([DATA_NO_BURST, 0, 10]) + text[:10] + data(0, text[10:])
      + time(5100) + data(1, ccm(b"Connect", [(b"Content-Length", b"0")], b"")) + time(4000)
      + data(0, ccm(b"Disconnect", [(b"Content-Length", b"0")], b"")))
write("ccm_service", "http_and_errors", bytes([ACCEPT, 0, ACCEPT, 1, ACCEPT, 2]) + data(0, b"GET / HTTP/1.1\r\n\r\n")
      + data(1, ccm(b"Text", [(b"Addressee", b"x")], b"")) + data(1, IDENTITY)
      + data(2, IDENTITY) + data(1, ccm(b"Text", [(b"User", b"bad"), (b"Addressee", b"x")], b"")))

# ---- MATOU ----


def mstr(b):
    return struct.pack(">i", len(b)) + b


def matou(kind, *fields):
    return struct.pack(">i", kind) + b"".join(fields)


connect_alice = matou(1, mstr(b"alice"))
write("matou_codec", "client_stream", b"\x00" + connect_alice + matou(4, mstr(b"hello")) + matou(6, mstr(b"bob"))
      + matou(8, mstr(b"bob")) + matou(10, mstr(b"bob"), struct.pack(">ii", 5000, 5001)) + matou(15))
write("matou_codec", "server_stream_bytewise", b"\x80" + matou(2, b"\x01") + matou(3, mstr(b"bob"))
      + matou(5, mstr(b"bob"), mstr(b"hi")) + matou(7, mstr(b"bob")) + matou(9, mstr(b"bob"), mstr(b"\x7f\x00\x00\x01"))
      + matou(11, mstr(b"alice"), mstr(bytes(16)), struct.pack(">ii", 5000, 5001)) + matou(16, mstr(b"bob"))
      + matou(17, struct.pack(">i", 3), mstr(b"too long")))
write("matou_codec", "peer_stream_with_file", b"\x10" + matou(12, mstr(b"psst")) + matou(13, struct.pack(">q", 5))
      + b"12345" + matou(14))
write("matou_codec", "negative_size", b"\x00" + matou(1, struct.pack(">i", -1)))

write("matou_service", "sign_in_talk_link", bytes([ACCEPT, 0, ACCEPT, 1, ACCEPT, 2])
      + data(0, connect_alice) + data(1, matou(1, mstr(b"bob"))) + data(2, matou(1, mstr(b"alice")))
      + data(0, matou(4, mstr(b"hello all"))) + data(0, matou(6, mstr(b"bob")))
      + data(1, matou(8, mstr(b"alice"))) + data(0, matou(10, mstr(b"bob"), struct.pack(">ii", 5000, 5001)))
      + data(2, matou(4, mstr(b"x"))) + data(1, matou(15)) + bytes([CLOSE, 0]))
write("matou_service", "cut_and_bad", bytes([ACCEPT, 3]) + data(3, connect_alice[:6]) + data(3, connect_alice[6:])
      + data(3, matou(4, mstr(b"\x01ctl"))) + data(3, matou(6, mstr(b"alice"))) + data(3, matou(99)))

# ---- OCM ----
TCRP_REQUESTS = vectors("ocm-tcrp-requests.tsv")


def tcrp(operation, state, room, payload):
    return bytes([len(room), operation, state]) + bytes(21) + struct.pack(">Q", len(payload)) + room + payload


def request_json(name, ip, port):
    return json.dumps({"user_name": name, "user_address": [ip, port]}).encode()


def answer_json(status, message, token=None):
    body = {"status": status, "message": message}
    if token is not None:
        body["token"] = token
    return json.dumps(body).encode()


requests = [bytes.fromhex(v) for v in TCRP_REQUESTS]
answer = tcrp(5, 2, b"", answer_json(202, "リクエストを完了しました。", "ab" * 32))
answer = bytes([5]) + answer[1:]  # an answer's RoomNameSize counts characters of a name it does not carry
write("tcrp_codec", "create_request", b"\x00" + requests[0])
write("tcrp_codec", "join_request_cut", b"\x30" + requests[1])
write("tcrp_codec", "two_bytewise", b"\x80" + requests[0] + requests[1])
write("tcrp_codec", "answer", b"\x00" + answer)
write("tcrp_codec", "huge_size", b"\x00" + bytes([5, 1, 0]) + b"\x01" + bytes(28) + b"lobby")

TOKEN_OCM1 = "%064x" % 1
TOKEN_OCM2 = "%064x" % 2


def datagram(room, token, message):
    return bytes([len(room), len(token)]) + room + token + message


write("ocm_datagram", "hello", datagram(b"lobby", TOKEN_OCM1.encode(), b"hello"))
write("ocm_datagram", "exit_japanese", datagram("部屋".encode(), TOKEN_OCM2.encode(), b"exit"))
write("ocm_datagram", "truncated", b"\x05\x40lob")

write("ocm_json", "request", request_json("alice", "127.0.0.1", 40001))
write("ocm_json", "request_v6_escaped", json.dumps({"user_name": "名前\n", "user_address": ["::1", 9, 0, 0], "x": [1.5e3, None, True]}).encode())
write("ocm_json", "answer", answer_json(202, "リクエストを完了しました。", "ab" * 32))
write("ocm_json", "answer_surrogates", b'{"status": 500, "message": "\\ud83d\\ude00 \\u0000"}')
write("ocm_json", "deep", b"[" * 200 + b"]" * 200)

DATAGRAM, FAILING = 4, 6
create = tcrp(1, 0, b"lobby", request_json("alice", "127.0.0.1", 40000))
join = tcrp(2, 0, b"lobby", request_json("bob", "127.0.0.2", 40001))
alice_says = datagram(b"lobby", TOKEN_OCM1.encode(), b"hello")
bob_says = datagram(b"lobby", TOKEN_OCM2.encode(), "こんにちは".encode())


def say(selector, payload):
    return bytes([DATAGRAM, selector, len(payload)]) + payload


write("ocm_service", "create_join_chat", bytes([ACCEPT, 0]) + data(0, create) + bytes([ACCEPT, 1])
      + data(1, join[:20]) + data(1, join[20:]) + say(0, alice_says) + say(5, bob_says)
      + bytes([FAILING, 5]) + say(0, alice_says) + say(0, alice_says)
      + say(5, datagram(b"lobby", TOKEN_OCM2.encode(), b"exit")) + time(30000) + say(0, alice_says))
write("ocm_service", "refusals", bytes([ACCEPT, 2]) + data(2, join) + bytes([ACCEPT, 3])
      + data(3, tcrp(1, 0, b"lobby", b"plain name")) + bytes([ACCEPT, 0]) + time(11000)
      + say(1, alice_says) + say(2, b"\x01"))

# The relay's operations: 0..=2 a datagram, 3 time, 4 toggle a failing address, 5 toggle full.


def relay(selector, payload):
    return bytes([0, selector, len(payload)]) + payload


write("relay_service", "three_peers", relay(0, b"hi") + relay(1, b"hello") + relay(2, b"hey")
      + bytes([4, 1]) + relay(0, b"again") + relay(2, b"and again") + time(15000) + relay(0, b"x" * 70)
      + bytes([5]) + relay(3, b"full") + bytes([5]) + time(25000) + relay(2, b"alone"))
write("relay_service", "crowd", b"".join(relay(i, b"m%d" % i) for i in range(8)))

# ---- the switchboard: every protocol behind one hub ----
# Operations (fuzz_targets/switchboard.rs): 0 accept SLOT KIND, 1 data SLOT LEN BYTES (then the
# read burst ends), 2 the same without the burst's end, 3 close REASON SLOT, 4 time MS (u16 LE),
# 5 handshake deadline SLOT, 6 report a send HOW (even: written), 7 the store answers,
# 8 datagram FROM TOKEN_SLOT LEN BYTES. `$T` stands for the slot's last token (CCM's User, OCM's).
SB_ROOM, SB_BIN24, SB_CCM, SB_MATOU, SB_OCM = range(5)
SB_PEER_CLOSED = 0


def sb_accept(slot, kind):
    return bytes([0, slot, kind])


def sb_data(slot, payload, burst_end=True):
    assert len(payload) < 256
    return bytes([1 if burst_end else 2, slot, len(payload)]) + payload


def sb_close(slot):
    return bytes([3, SB_PEER_CLOSED, slot])


def sb_time(ms):
    return bytes([4]) + struct.pack("<H", ms)


def sb_report(written):
    return bytes([6, 0 if written else 1])


SB_STORE = bytes([7])


def sb_datagram(source, token_slot, payload):
    return bytes([8, source, token_slot, len(payload)]) + payload


def ccm_identify(name):
    return ccm(b"NotDefined", [(b"Message-Encoding", b"utf-8"), (b"Content-Length", b"%d" % len(name))], name)


def ccm_text(to, content):
    return ccm(b"Text", [(b"User", b"$T"), (b"Addressee", to), (b"Content-Length", b"%d" % len(content))], content)


write("switchboard", "room_line_to_matou_and_ccm",
      sb_accept(0, SB_ROOM) + sb_accept(1, SB_MATOU) + sb_accept(2, SB_CCM)
      + sb_data(0, b"rui\n") + sb_data(1, matou(1, mstr(b"mia"))) + sb_data(2, ccm_identify(b"cat"))
      + sb_data(0, b"rui: hi all\n") + sb_report(True)
      + sb_data(1, matou(4, mstr(b"hello from matou"))) + sb_data(2, ccm_text(b"*", b"hello from ccm"))
      + sb_close(0) + sb_time(6000) + sb_time(3000) + sb_close(1) + sb_close(2))
write("switchboard", "ccm_and_bin24_direct",
      sb_accept(0, SB_BIN24) + sb_accept(1, SB_CCM) + sb_data(1, ccm_identify(b"cat"))
      + sb_data(0, bin24(0, 7, b"bob", b"cat", b"oi cat")) + sb_report(True)
      + sb_data(1, ccm_text(b"bob", b"oi bob")) + SB_STORE
      + sb_data(0, bin24(1, 1, b"bob", b"cat", b"200"))
      + sb_data(0, bin24(0, 8, b"bob", b"cat", b"again")) + sb_report(False) + SB_STORE + SB_STORE
      + sb_close(1) + sb_data(0, bin24(0, 9, b"bob", b"cat", b"gone")) + SB_STORE
      + sb_accept(2, SB_BIN24) + sb_data(2, bin24(0, 1, b"cat", b"bob", b"back")) + SB_STORE
      + SB_STORE + sb_report(True) + sb_time(3500) + SB_STORE)
write("switchboard", "name_claimed_twice",
      sb_accept(0, SB_MATOU) + sb_accept(1, SB_CCM) + sb_accept(2, SB_BIN24) + sb_accept(3, SB_ROOM)
      + sb_data(0, matou(1, mstr(b"alice"))) + sb_data(1, ccm_identify(b"alice"))
      + sb_data(2, bin24(0, 1, b"alice", b"bob", b"x")) + sb_data(3, b"alice\n")
      + sb_close(0) + sb_data(1, ccm_identify(b"alice")) + sb_accept(4, SB_MATOU)
      + sb_data(4, matou(1, mstr(b"alice"))) + sb_accept(0, SB_BIN24)
      + sb_data(0, bin24(0, 1, b"alice", b"bob", b"y")) + SB_STORE + bytes([5, 4]))
# Slot 3's IP is 127.0.0.4: datagram source 3 is that IP, port 40000, as its request names.
write("switchboard", "ocm_lobby_with_room_and_ccm",
      sb_accept(3, SB_OCM) + sb_data(3, tcrp(1, 0, b"lobby", request_json("olga", "127.0.0.4", 40000)))
      + sb_accept(0, SB_ROOM) + sb_data(0, b"rui\n") + sb_accept(1, SB_CCM) + sb_data(1, ccm_identify(b"cat"))
      + sb_datagram(3, 3, bytes([5, 64]) + b"lobby$Thello from ocm") + sb_data(0, b"rui: hi olga\n")
      + sb_data(1, ccm_text(b"*", b"hi olga")) + sb_time(21000)
      + sb_datagram(3, 3, bytes([5, 64]) + b"lobby$Texit"))


# ---- cluster_codec: src/cluster/codec.rs's format, version 1 ----

def cluster(node, incarnation, seq, body):
    return bytes([1, len(node)]) + node + struct.pack(">QQ", incarnation, seq) + body


def cluster_said(origin, sender, text):
    return bytes([1, origin]) + struct.pack(">H", len(sender)) + sender + struct.pack(">I", len(text)) + text


def cluster_presence(origin, kind, name):
    return bytes([2, origin, kind]) + struct.pack(">H", len(name)) + name


# Origins by ProtocolKind::index: 0 ROOM, 1 BIN24, 2 CCM, 3 MATOU, 4 OCM.
write("cluster_codec", "said_matou", cluster(b"node-a", 7, 1, cluster_said(3, b"mia", b"oi gente")))
write("cluster_codec", "presence_room_entered", cluster(b"node-b", 9, 2, cluster_presence(0, 0, b"b'rui'")))
write("cluster_codec", "presence_matou_left", cluster(b"n", 1, 3, cluster_presence(3, 1, b"mia")))


def cluster_addressed(to_node, to_incarnation, kind, sender, recipient, encoding, body,
                      from_node=b"", from_incarnation=0, request=None):
    tail = (bytes([len(from_node)]) + from_node + struct.pack(">Q", from_incarnation)
            + (bytes([0]) if request is None else bytes([1]) + struct.pack(">Q", request)))
    return (bytes([3, len(to_node)]) + to_node + struct.pack(">Q", to_incarnation)
            + bytes([len(kind)]) + kind + struct.pack(">H", len(sender)) + sender
            + struct.pack(">H", len(recipient)) + recipient + bytes([len(encoding)]) + encoding
            + struct.pack(">I", len(body)) + body + tail)


def cluster_private(to_node, to_inc, from_node, from_inc, step, src, dst, address, ports):
    return (bytes([4, len(to_node)]) + to_node + struct.pack(">Q", to_inc)
            + bytes([len(from_node)]) + from_node + struct.pack(">Q", from_inc) + bytes([step])
            + struct.pack(">H", len(src)) + src + struct.pack(">H", len(dst)) + dst
            + bytes([len(address)]) + address + struct.pack(">ii", *ports))


write("cluster_codec", "private_src_ports",
      cluster(b"node-a", 7, 5, cluster_private(b"node-b", 9, b"node-a", 7, 2, b"mia", b"max",
                                               bytes([127, 0, 0, 1]), (5000, 5001))))
write("cluster_codec", "addressed_ccm_text",
      cluster(b"node-a", 7, 4, cluster_addressed(b"node-b", 9, b"Text", b"cid", b"cat", b"utf-8", b"oi")))
write("cluster_codec", "addressed_web_direct",
      cluster(b"node-a", 7, 6, cluster_addressed(b"node-b", 9, b"web", b"wes", b"cat", b"utf-8", b"oi",
                                                 b"node-a", 7, 42)))
write("cluster_codec", "addressed_web_receipt",
      cluster(b"node-b", 9, 3, cluster_addressed(b"node-a", 7, b"web-sent", b"", b"wes", b"",
                                                 b"delivered", b"", 0, 42)))


def cluster_bin24(to_node, to_inc, from_node, from_inc, step, frame):
    return (bytes([6, len(to_node)]) + to_node + struct.pack(">Q", to_inc)
            + bytes([len(from_node)]) + from_node + struct.pack(">Q", from_inc) + bytes([step])
            + struct.pack(">H", len(frame)) + frame)


# A BIN24 message for node-b's user, and that user's "200" back to node-a.
write("cluster_codec", "bin24_message",
      cluster(b"node-a", 7, 6, cluster_bin24(b"node-b", 9, b"node-a", 7, 0,
                                             bin24(0, 1, b"ana", b"bob", b"hello bob"))))
write("cluster_codec", "bin24_answer_200",
      cluster(b"node-b", 9, 3, cluster_bin24(b"node-a", 7, b"node-b", 9, 1,
                                             bin24(1, 1, b"bob", b"ana", b"200"))))


# WEB (fuzz_targets/web_codec.rs): a client's masked frames, whole and fragmented, with a
# ping between fragments and a close; and a handshake request.
def ws(fin, opcode, payload, mask=b"\x37\xfa\x21\x3d"):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


write("web_codec", "client_stream", b"\x40" + ws(True, 1, b'{"type":"signin","name":"ann"}')
      + ws(False, 1, b'{"type":"say",') + ws(True, 9, b"p") + ws(True, 0, b'"text":"hi"}')
      + ws(True, 1, b'{"type":"direct","to":"bob","text":"' + "\u00e9".encode() + b'","id":7}')
      + ws(True, 10, b"") + ws(True, 8, struct.pack(">H", 1000)))
write("web_codec", "stream_bytewise", b"\x80" + ws(True, 1, b"x" * 200) + ws(True, 1, b'{"type":"ping"}'))
write("web_codec", "handshake", b"\x7f" + b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      b"Sec-WebSocket-Version: 13\r\nOrigin: http://a\r\n\r\n")

# web_service: a program (see its `match ops.byte() % 8`): ann and bob upgrade and sign in,
# ann says hi to the lobby and sends bob a direct message, its note is reported, time
# passes, bob leaves; then a raw garbage request on a connection that did not upgrade.
def chunk(data):
    return bytes([len(data)]) + data


write("web_service", "two_users", bytes([0, 0, 1]) + bytes([5, 0, 0]) + chunk(b"") + bytes([0])
      + bytes([0, 1, 1]) + bytes([5, 1, 1]) + chunk(b"") + bytes([0])
      + bytes([5, 0, 0]) + chunk(b"hi") + bytes([1])
      + bytes([5, 0, 1]) + chunk(b"yo") + bytes([2])
      + bytes([4, 0]) + bytes([3, 0xe8, 0x03]) + bytes([1, 1])
      + bytes([0, 2, 0]) + bytes([7, 2]) + chunk(b"DELETE / HTTP/1.1\r\n\r\n"))


# The switchboard with a web user (kind 5): upgrade and sign in, a lobby line to ROOM and CCM,
# direct messages to CCM and BIN24 and back, each note reported.
SB_WEB = 5
WS_UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
write("switchboard", "web_with_room_ccm_and_bin24",
      sb_accept(0, SB_ROOM) + sb_data(0, b"rui\n") + sb_accept(1, SB_CCM) + sb_data(1, ccm_identify(b"cat"))
      + sb_accept(2, SB_BIN24) + sb_data(2, bin24(1, 0xFFFFFFFF, b"bob", b"nobody", b"200"))
      + sb_accept(3, SB_WEB) + sb_data(3, WS_UPGRADE)
      + sb_data(3, ws(True, 1, b'{"type":"signin","name":"wen"}'))
      + sb_data(3, ws(True, 1, b'{"type":"say","text":"hi all"}'))
      + sb_data(3, ws(True, 1, b'{"type":"direct","to":"cat","text":"hi cat","id":1}')) + sb_report(True)
      + sb_data(3, ws(True, 1, b'{"type":"direct","to":"bob","text":"hi bob","id":2}'))
      + sb_data(2, bin24(1, 0, b"bob", b"wen", b"200"))
      + sb_data(1, ccm_text(b"wen", b"hi wen")) + sb_data(2, bin24(0, 5, b"bob", b"wen", b"oi"))
      + sb_report(True) + sb_time(3500) + SB_STORE + sb_close(3) + sb_close(1))

def cluster_ocm(step, room, room_id, member, home, home_inc, address, port, in_lobby, text):
    body = (bytes([7, step, len(room)]) + room + struct.pack(">Q", room_id)
            + struct.pack(">H", len(member)) + member + bytes([len(home)]) + home
            + struct.pack(">Q", home_inc) + bytes([len(address)]) + address)
    if address:
        body += struct.pack(">H", port)
    return body + bytes([in_lobby]) + struct.pack(">H", len(text)) + text


# An OCM room's chat from node-b's member (its datagram's source with it), and its close.
write("cluster_codec", "ocm_chat",
      cluster(b"node-a", 7, 8, cluster_ocm(1, b"sala", 0x0102030405060708, b"ana", b"node-b", 9,
                                           bytes([127, 0, 0, 2]), 40001, 0, b"ana: oi")))
write("cluster_codec", "ocm_closed",
      cluster(b"node-b", 9, 4, cluster_ocm(3, "部屋".encode(), 5, b"hal", b"node-b", 9, b"", 0, 0,
                                           "halが部屋から退出しました。".encode())))


# ---- cluster_resp: RESP2 replies the reactor's Redis links read (src/cluster/resp.rs) ----
def resp_bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


def resp_array(*items):
    return b"*%d\r\n" % len(items) + b"".join(items)


RESP_SUBSCRIBED = (resp_array(resp_bulk(b"subscribe"), resp_bulk(b"switchboard:lobby"), b":1\r\n")
                   + resp_array(resp_bulk(b"subscribe"), resp_bulk(b"switchboard:to:n"), b":2\r\n"))
RESP_MESSAGE = resp_array(resp_bulk(b"message"), resp_bulk(b"switchboard:lobby"),
                          resp_bulk(b"\x01\x06node-a\x00\r\n\xff"))
# Whole, then cut in the middle, then one byte a read.
write("cluster_resp", "subscribed_then_message", b"\x00" + RESP_SUBSCRIBED + RESP_MESSAGE)
write("cluster_resp", "subscribed_then_message_cut", b"\x40" + RESP_SUBSCRIBED + RESP_MESSAGE)
write("cluster_resp", "subscribed_then_message_bytewise", b"\x80" + RESP_SUBSCRIBED + RESP_MESSAGE)
# The publishing link's answers: PING's, PUBLISH's count, a refusal.
write("cluster_resp", "pong_published_refused",
      b"\x81+PONG\r\n:2\r\n:0\r\n-ERR max memory\r\n" + resp_array(resp_bulk(b"pong"), resp_bulk(b"")))
write("cluster_resp", "nested_null", b"\x10" + resp_array(resp_array(b":7\r\n"), b"*0\r\n", b"$-1\r\n", b"*-1\r\n"))
# Limits: a bulk longer than allowed, an array of 17, a line that never ends.
write("cluster_resp", "bulk_too_long", b"\x00$999999999999\r\n")
write("cluster_resp", "array_too_long", b"\x00*17\r\n")
write("cluster_resp", "endless_line", b"\x90+" + b"a" * 5000)
