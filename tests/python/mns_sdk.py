"""Drives a running sluice with the official MNS Python SDK (`aliyun-mns-sdk`).

Run by the e2e suite (tests/tests/e2e/mns.rs), one scenario per call:

    python3 mns_sdk.py ops  ENDPOINT ACCESS_KEY_ID SECRET   # every operation + error paths
    python3 mns_sdk.py deny ENDPOINT ACCESS_KEY_ID SECRET   # a key limited to queues/allowed-q
    python3 mns_sdk.py flow ENDPOINT ACCESS_KEY_ID SECRET N # read rule output from queues
    python3 mns_sdk.py controls ENDPOINT ACCESS_KEY_ID SECRET QUEUE # bodies XML cannot carry
    python3 mns_sdk.py egress ENDPOINT ACCESS_KEY_ID SECRET URL=ADDRESS...
                                            # HTTP subscriptions to refused addresses: 400

Prints one line per step and `ALL OK` at the end; any failure raises (non-zero exit).
"""

import base64
import hashlib
import json
import sys

from mns.account import Account
from mns.mns_exception import MNSServerException
from mns.queue import Message, QueueMeta
from mns.subscription import SubscriptionMeta
from mns.topic import TopicMessage, TopicMeta


def step(name):
    print("step:", name, flush=True)


def expect_error(code, fn, *args):
    """Calls fn(*args) and checks it raises the MNS error `code`."""
    try:
        fn(*args)
    except MNSServerException as e:
        assert e.type == code, "expected %s, got %s: %s" % (code, e.type, e.message)
        return e
    raise AssertionError("expected %s, the call succeeded" % code)


def md5_upper(data):
    return hashlib.md5(data).hexdigest().upper()


def ops(endpoint, key_id, secret):
    acc = Account(endpoint, key_id, secret)

    step("CreateQueue / GetQueueAttributes / SetQueueAttributes")
    q = acc.get_queue("sdk-q")
    meta = QueueMeta()
    meta.set_visibilitytimeout(5)
    meta.set_polling_wait_seconds(0)
    url = q.create(meta)
    assert url.endswith("/queues/sdk-q"), url
    q.create(meta)  # the same attributes again: 204, no error
    attrs = q.get_attributes()
    assert attrs.visibility_timeout == 5 and attrs.queue_name == "sdk-q", vars(attrs)
    assert attrs.maximum_message_size == 65536 and attrs.delay_seconds == 0
    change = QueueMeta()
    change.set_visibilitytimeout(3)
    q.set_attributes(change)
    assert q.get_attributes().visibility_timeout == 3
    bad = QueueMeta()
    bad.set_visibilitytimeout(43201)
    e = expect_error("InvalidArgument", q.set_attributes, bad)
    assert "visibility_timeout" in e.message and "43200" in e.message, e.message
    assert q.get_attributes().visibility_timeout == 3  # nothing changed
    other = QueueMeta()
    other.set_visibilitytimeout(7)
    expect_error("QueueAlreadyExist", q.create, other)

    step("ListQueue with prefix, paging and meta")
    acc.get_queue("sdk-q2").create(QueueMeta())
    urls, marker = acc.list_queue("sdk-", 1)
    assert len(urls) == 1 and urls[0].endswith("/queues/sdk-q") and marker == "sdk-q2", (urls, marker)
    urls, marker = acc.list_queue("sdk-", 10, marker)
    assert [u.rsplit("/", 1)[1] for u in urls] == ["sdk-q2"] and marker == "", (urls, marker)

    step("SendMessage / ReceiveMessage (SDK base64 both ways) / DeleteMessage")
    sent = q.send_message(Message("hello sdk"))
    assert sent.message_body_md5 == md5_upper(base64.b64encode(b"hello sdk")), sent.message_body_md5
    got = q.receive_message(1)
    assert got.message_body == b"hello sdk", got.message_body
    assert got.message_id == sent.message_id and got.dequeue_count == 1
    assert got.next_visible_time > got.enqueue_time
    q.delete_message(got.receipt_handle)
    q.delete_message(got.receipt_handle)  # twice with the current handle: still fine

    step("raw bodies with set_encoding(False), priority, user properties")
    q.set_encoding(False)
    m = Message('{"t": 1}', priority=1)
    from mns.message_property import MessagePropertyValue
    m.add_user_property("device", MessagePropertyValue.create_string("dev1"))
    sent = q.send_message(m)
    assert sent.message_body_md5 == md5_upper(b'{"t": 1}')
    got = q.receive_message(1)
    assert got.message_body == '{"t": 1}' and got.priority == 1, vars(got)
    props = got.user_properties
    assert props["device"].get_string_value_by_type() == "dev1", props

    step("stale receipt handle after ChangeMessageVisibility")
    changed = q.change_message_visibility(got.receipt_handle, 10)
    assert changed.receipt_handle != got.receipt_handle
    e = expect_error("ReceiptHandleStale", q.delete_message, got.receipt_handle)
    q.delete_message(changed.receipt_handle)
    expect_error("ReceiptHandleError", q.delete_message, "not-a-handle")

    step("receive on an empty queue -> MessageNotExist (with and without a wait)")
    expect_error("MessageNotExist", q.receive_message, 0)
    expect_error("MessageNotExist", q.receive_message, 1)
    expect_error("MessageNotExist", q.peek_message)

    step("BatchSendMessage / BatchPeekMessage / BatchReceiveMessage / BatchDeleteMessage")
    batch = [Message("m%d" % i) for i in range(5)]
    sent = q.batch_send_message(batch)
    assert len(sent) == 5
    peeked = q.peek_message()
    assert peeked.message_body == "m0" and peeked.dequeue_count == 0, vars(peeked)
    peeked = q.batch_peek_message(16)
    assert [p.message_body for p in peeked] == ["m%d" % i for i in range(5)]
    got = q.batch_receive_message(3, 1)
    assert [g.message_body for g in got] == ["m0", "m1", "m2"]
    q.batch_delete_message([g.receipt_handle for g in got])
    got = q.batch_receive_message(16, 1)
    assert [g.message_body for g in got] == ["m3", "m4"]
    e = expect_error("ReceiptHandleError", q.batch_delete_message, [got[0].receipt_handle, "bogus"])
    assert e.sub_errors and e.sub_errors[0]["ReceiptHandle"] == "bogus", e.sub_errors
    q.delete_message(got[1].receipt_handle)  # the good one of the failed batch was deleted
    expect_error("MessageNotExist", q.peek_message)

    step("unknown queue -> QueueNotExist")
    missing = acc.get_queue("no-such-queue")
    expect_error("QueueNotExist", missing.get_attributes)
    expect_error("QueueNotExist", missing.send_message, Message("x"))
    expect_error("QueueNotExist", missing.receive_message, 0)
    expect_error("QueueNotExist", missing.delete)

    step("topics: CreateTopic / Get / Set / ListTopic / Subscribe / PublishMessage")
    t = acc.get_topic("sdk-t")
    assert t.create(TopicMeta()).endswith("/topics/sdk-t")
    tattrs = t.get_attributes()
    assert tattrs.topic_name == "sdk-t" and tattrs.maximum_message_size == 65536, vars(tattrs)
    t.set_attributes(TopicMeta())
    expect_error("InvalidArgument", t.set_attributes, TopicMeta(maximum_message_size=2048))
    urls, _ = acc.list_topic("sdk-")
    assert [u.rsplit("/", 1)[1] for u in urls] == ["sdk-t"], urls
    sub = t.get_subscription("sdk-t-to-q")
    sub_url = sub.subscribe(SubscriptionMeta("acs:mns:cn-hangzhou:123456:queues/sdk-q", filter_tag="hot"))
    assert sub_url.endswith("/topics/sdk-t/subscriptions/sdk-t-to-q"), sub_url
    sattrs = sub.get_attributes()
    assert sattrs.endpoint.endswith(":queues/sdk-q") and sattrs.filter_tag == "hot", vars(sattrs)
    sub.set_attributes(SubscriptionMeta(notify_strategy="BACKOFF_RETRY"))
    expect_error("InvalidArgument", sub.set_attributes,
                 SubscriptionMeta(notify_strategy="EXPONENTIAL_DECAY_RETRY"))  # queues are never retried
    hsub = t.get_subscription("sdk-t-to-http")
    hsub.subscribe(SubscriptionMeta("http://127.0.0.1:9/hook", notify_strategy="BACKOFF_RETRY"))
    hsub.set_attributes(SubscriptionMeta(notify_strategy="EXPONENTIAL_DECAY_RETRY"))
    hattrs = hsub.get_attributes()
    assert hattrs.notify_strategy == "EXPONENTIAL_DECAY_RETRY", vars(hattrs)
    expect_error("InvalidArgument", hsub.set_attributes, SubscriptionMeta(notify_strategy="SOMETIMES"))
    hsub.unsubscribe()
    expect_error("SubscriptionAlreadyExist", sub.subscribe, SubscriptionMeta("acs:mns:r:1:queues/sdk-q2"))
    expect_error("InvalidArgument", t.get_subscription("bad").subscribe, SubscriptionMeta("ftp://x"))
    urls, _ = t.list_subscription()
    assert [u.rsplit("/", 1)[1] for u in urls] == ["sdk-t-to-q"], urls
    t.publish_message(TopicMessage("cold", "cold"))
    published = t.publish_message(TopicMessage('{"hot": true}', "hot"))
    assert published.message_body_md5 == md5_upper(b'{"hot": true}')
    got = q.receive_message(1)
    assert got.message_body == '{"hot": true}' and got.message_id == published.message_id
    q.delete_message(got.receipt_handle)
    expect_error("MessageNotExist", q.receive_message, 0)  # "cold" was filtered out

    step("Unsubscribe / DeleteTopic / DeleteQueue and their errors")
    sub.unsubscribe()
    expect_error("SubscriptionNotExist", sub.get_attributes)
    expect_error("SubscriptionNotExist", sub.unsubscribe)
    t.delete()
    expect_error("TopicNotExist", t.get_attributes)
    expect_error("TopicNotExist", t.publish_message, TopicMessage("x"))
    q.delete()
    acc.get_queue("sdk-q2").delete()
    expect_error("QueueNotExist", q.get_attributes)

    step("a Date 15+ minutes off -> TimeExpired; the same request signed now works")
    import http.client
    import time
    from mns.mns_client import MNSClient
    client = MNSClient(endpoint, key_id, secret)
    for offset, status in ((-3600, 408), (0, 200)):
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + offset))
        headers = {"x-mns-version": "2015-06-06", "date": date}
        headers["Authorization"] = client.get_signature(
            "GET", headers, "/queues", client.credentials_provider.get_credentials())
        conn = http.client.HTTPConnection(client.host)
        conn.request("GET", "/queues", "", headers)
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == status, (r.status, body)
        if status == 408:
            assert "<Code>TimeExpired</Code>" in body, body

    step("bad signature, unknown key: the same answer")
    wrong = Account(endpoint, key_id, secret + "x")
    e1 = expect_error("SignatureDoesNotMatch", wrong.list_queue)
    unknown = Account(endpoint, "SKnobody", secret)
    e2 = expect_error("SignatureDoesNotMatch", unknown.list_queue)
    assert (e1.type, e1.message) == (e2.type, e2.message), (e1, e2)
    print("ALL OK")


def deny(endpoint, key_id, secret):
    """A key with `queues/allowed-q:send,consume` only."""
    acc = Account(endpoint, key_id, secret)
    q = acc.get_queue("allowed-q")
    q.set_encoding(False)
    step("allowed: send, receive, delete")
    q.send_message(Message("ok"))
    got = q.receive_message(1)
    q.delete_message(got.receipt_handle)
    step("denied: attributes, other queues, lists, topics, create")
    expect_error("AccessDenied", q.get_attributes)
    expect_error("AccessDenied", acc.get_queue("other-q").send_message, Message("x"))
    expect_error("AccessDenied", acc.list_queue)
    expect_error("AccessDenied", acc.get_topic("alerts").publish_message, TopicMessage("x"))
    expect_error("AccessDenied", acc.get_queue("new-q").create, QueueMeta())
    print("ALL OK")


def flow(endpoint, key_id, secret, n):
    """Reads the rule's output from two queue subscriptions of one topic: `raw-q` (bodies as
    published; the consumer calls set_encoding(False)) and `b64-q` (subscription option
    base64_body; the consumer keeps the SDK's default base64 decoding)."""
    n = int(n)
    acc = Account(endpoint, key_id, secret)
    for name, encoding in (("raw-q", False), ("b64-q", True)):
        step("consume %d messages from %s (set_encoding(%s))" % (n, name, encoding))
        q = acc.get_queue(name)
        q.set_encoding(encoding)
        seen = []
        while len(seen) < n:
            try:
                msg = q.receive_message(3)
            except MNSServerException as e:
                if e.type == "MessageNotExist":
                    raise AssertionError("%s: only %d of %d messages arrived" % (name, len(seen), n))
                raise
            body = msg.message_body
            if isinstance(body, bytes):
                body = body.decode("utf-8")
            doc = json.loads(body)
            props = {k: v.get_string_value_by_type() for k, v in msg.user_properties.items()}
            assert props["device_name"] == doc["device"], (props, doc)
            assert props["source_topic"] == "/flowpk/%s/user/telemetry" % doc["device"], props
            assert props["rule"] == "to-flow" and props["source_message_id"], props
            seen.append(doc["seq"])
            q.delete_message(msg.receipt_handle)
        assert sorted(seen) == list(range(n)), seen
        expect_error("MessageNotExist", q.receive_message, 0)
    print("ALL OK")


def controls(endpoint, key_id, secret, queue):
    """QUEUE holds, sent through /v1/, `plain`, a body `x\\u0001y` and a message whose attribute
    `a` is `\\u0002`: peeked and received in one batch each, every message arrives, the odd body
    as base64 (its MD5 is the stored bytes') and the odd attribute as a BINARY property."""
    acc = Account(endpoint, key_id, secret)
    q = acc.get_queue(queue)
    q.set_encoding(False)

    def check(msgs):
        by_body = {}
        for m in msgs:
            by_body[m.message_body] = m
        assert len(msgs) == 3, [m.message_body for m in msgs]
        odd = by_body[base64.b64encode(b"x\x01y").decode()]
        assert odd.message_body_md5 == md5_upper(b"x\x01y"), odd.message_body_md5
        attr = by_body["attr"].user_properties["a"]
        assert attr.get_binary_value() == b"\x02", attr.get_binary_value()
        assert "plain" in by_body

    step("BatchPeekMessage of bodies and attributes XML cannot carry")
    check(q.batch_peek_message(16))
    step("BatchReceiveMessage of the same")
    msgs = q.batch_receive_message(16)
    check(msgs)
    q.batch_delete_message([m.receipt_handle for m in msgs])
    print("ALL OK")


def egress(endpoint, key_id, secret, *cases):
    """Each URL=ADDRESS: subscribing URL is refused with InvalidArgument naming ADDRESS."""
    acc = Account(endpoint, key_id, secret)
    t = acc.get_topic("egress")
    t.create(TopicMeta())
    for i, case in enumerate(cases):
        url, addr = case.rsplit("=", 1)
        step("Subscribe %s" % url)
        e = expect_error("InvalidArgument", t.get_subscription("s%d" % i).subscribe,
                         SubscriptionMeta(url))
        assert "Endpoint" in e.message and addr in e.message, e.message
        print("  ", e.message)
    assert acc.get_topic("egress").list_subscription()[0] == [], "nothing was created"
    print("ALL OK")


if __name__ == "__main__":
    scenario, args = sys.argv[1], sys.argv[2:]
    {"ops": ops, "deny": deny, "flow": flow, "controls": controls, "egress": egress}[scenario](*args)
